"""tui-align: align a language model by talking to it."""

__version__ = "0.1.0"

# No length in it: "Answer in one short sentence" made brief replies easy to teach and fuller
# ones impossible (bench/RESULTS.md, issue 12); the picks teach the model to finish instead.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
