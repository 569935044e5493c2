"""secure-assist: run, secure and audit server-assisted side-tuning of LLMs."""

__version__ = "0.1.0"
