"""The local engine: the realtime protocol served offline with speech models from pip packages."""
