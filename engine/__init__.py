"""The model-facing side: the engine process, its trainers and headless runs. It never imports tui_align.

The person-facing process (tui_align) imports, at module level, only the engine modules named in
TORCH_FREE: importing one imports no torch, transformers or peft (a function of theirs that needs
them imports them inside itself), so `tui-align --help` and the TUI's first frame never wait for
them. Any other engine module is imported lazily, inside the headless command that runs it.
tests/test_engine_imports.py holds both sides to this.
"""

TORCH_FREE = (
    "engine.protocol",  # messages, user-facing errors, training configs and their defaults
    "engine.versions",  # a session's version folders, checked from their files' headers
    "engine.models",  # the default model's paths, resolving --model, LoRAConfig
    "engine.resources",  # pids and threads
)
