"""aoai-realtime: voice agents on Azure OpenAI /realtime, in Python."""

__version__ = "0.1.0"
