"""hallurun: run LLM prompt batches against a supervised server, exactly once."""

__version__ = "0.1.0"
