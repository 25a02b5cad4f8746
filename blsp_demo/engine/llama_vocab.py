"""The GGUF's own vocabulary as the engine's tokenizer, through llama.cpp (no second copy of it).

With the llama.cpp runtime the vocabulary is already in memory, inside llama.cpp; a transformers
tokenizer built from the same GGUF holds it again (0.14 GB for Qwen2.5's 151k tokens, measured with
`evaluations.benchmarks.serving`). `LlamaVocabTokenizer` offers the part of the transformers
tokenizer interface the engine uses (`__call__`, `encode`, `decode`, the special ids, `get_vocab`,
`convert_tokens_to_ids`) over `llama_tokenize` / `llama_detokenize`; the slow tests check that it
tokenizes and decodes as the transformers tokenizer of the same GGUF does.
"""

from __future__ import annotations

import ctypes


class LlamaVocabTokenizer:
    def __init__(self, runtime):
        self.runtime = runtime  # keeps the model (and so the vocabulary) alive
        self.lib = runtime.lib
        self.vocab = self.lib.llama_model_get_vocab(runtime.model)
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.vocab)
        self.eos_token_id = self._special(self.lib.llama_vocab_eos(self.vocab))
        self.bos_token_id = self._special(self.lib.llama_vocab_bos(self.vocab))
        self.pad_token_id = self._special(self.lib.llama_vocab_pad(self.vocab))

    @staticmethod
    def _special(token: int) -> int | None:
        return token if token >= 0 else None  # llama.cpp's LLAMA_TOKEN_NULL is -1

    def _tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        while True:
            buf = (self.lib.llama_token * cap)()
            n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            cap = -n  # the buffer was too small: n is minus the count needed

    def __call__(self, text: str, add_special_tokens: bool = True, split_special_tokens: bool = False) -> dict:
        """{"input_ids": ids}; `split_special_tokens`: control tokens written in the text stay text."""
        return {"input_ids": self._tokenize(text, add_special_tokens, not split_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenize(text, add_special_tokens, True)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        tokens = (self.lib.llama_token * len(ids))(*ids)
        cap = 16 * len(ids) + 16
        while True:
            out = ctypes.create_string_buffer(cap)
            n = self.lib.llama_detokenize(self.vocab, tokens, len(ids), out, cap, False, not skip_special_tokens)
            if n >= 0:
                return out.raw[:n].decode("utf-8", errors="replace")
            cap = -n

    def token_text(self, token: int) -> str:
        return self.lib.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def get_vocab(self) -> dict[str, int]:
        """Token text -> id, for the whole vocabulary (built on each call: the engine asks once)."""
        return {self.token_text(i): i for i in range(self.n_vocab)}

    def convert_tokens_to_ids(self, token: str) -> int | None:
        ids = self._tokenize(token, False, True)
        return ids[0] if len(ids) == 1 and self.token_text(ids[0]) == token else None
