"""harness: evaluate and distil language models on the protocols of the MiniLLM family of papers."""

__version__ = "0.1.0"
