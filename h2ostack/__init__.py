"""h2ostack: one stack file, one command, for self-hosted LLM servers and their chat fronts."""

__version__ = "0.1.0"
