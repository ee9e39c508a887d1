"""tui-align: align a language model by talking to it."""

__version__ = "0.1.0"

# Replies that finish teach; cut-off fragments teach only length (DESIGN.md, "The live
# loop"). Asking for short answers makes the default model finish most of its replies.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer in one short sentence."
