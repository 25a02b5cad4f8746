"""blsp-demo: talk to BLSP-style speech-language models (Whisper encoder -> adapter -> LLM)."""

__version__ = "0.1.0"
