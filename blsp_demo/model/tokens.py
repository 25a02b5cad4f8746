"""Token-level constants shared by the models and the engine, in a module without transformers: a
process that serves a GGUF through llama.cpp (the cascade default on a CPU) plans prompts with them
but never imports transformers' modeling code (it brings torch._dynamo and sympy, about 0.2 GB)."""

from __future__ import annotations

SPEECH_PLACEHOLDER = -200  # never a real token id; replaced by speech frames

# LLaSM's audio tokens (added to its tokenizer in this order)
AUDIO_PATCH, AUDIO_START, AUDIO_END = "<au_patch>", "<au_start>", "<au_end>"
AUDIO_TOKENS = (AUDIO_PATCH, AUDIO_START, AUDIO_END)
AUDIO_TOKEN_LEN = 64  # decoder positions (and LLM positions) per 30 s window


def audio_text(n_windows: int = 1, audio_token_len: int = AUDIO_TOKEN_LEN) -> str:
    """The text a LLaSM speech turn stands for: `<au_start>` + 64 x `<au_patch>` + `<au_end>` per window."""
    return (AUDIO_START + AUDIO_PATCH * audio_token_len + AUDIO_END) * n_windows
