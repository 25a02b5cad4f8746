"""llama.cpp as the LLM runtime on a CPU: the shipped GGUF's Q4/Q8 weights used as they are (memory
mapped, no fp32 copy), through llama-cpp-python's low-level API.

One llama.cpp context serves every conversation of an engine: each conversation's KV cache is one
sequence of the context's unified KV cache (`LlamaSeq`, what `ChatCache.past` holds), cropped with
`llama_memory_seq_rm` and copied (the shared prompt starts) with `llama_memory_seq_cp`, which shares
the cells instead of copying them. Speech frames enter as an embedding batch (`llama_batch.embd`),
the way llama.cpp's own multimodal path feeds image embeddings; text positions as tokens.

A sequence is given back to the pool when its `LlamaSeq` is dropped (the conversation LRU evicted
it, or it was forgotten). When the KV cache or the pool is full, the least recently used other
sequences are cleared and their `LlamaSeq` marked empty (`held() == 0`): that conversation's next
turn prefills again. The cache keys (`engine.cache`) stay the truth of what a position holds.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

BATCH = 512  # positions per llama_decode call (prefill chunks)
# KV cache cell types (ggml type id, bytes per value): q8_0 halves the cache against f16 (32 values in
# 34 bytes); llama.cpp needs flash attention for a quantized V cache, which it turns on by itself on a CPU.
KV_TYPES = {"f16": (1, 2.0), "q8_0": (8, 34 / 32)}


class LlamaCppError(RuntimeError):
    pass


def _lib():
    try:
        import llama_cpp
    except ImportError as err:  # pragma: no cover - depends on the install
        raise LlamaCppError("llama-cpp-python is not installed: run `bash scripts/setup.sh` (it builds it), "
                            "or set BLSP_LLM_RUNTIME=torch") from err
    return llama_cpp


def _silence(lib) -> None:
    """llama.cpp logs every load to stderr; keep only errors (GGML_LOG_LEVEL_ERROR, 4)."""
    @lib.llama_log_callback
    def quiet(level, text, user_data):  # noqa: ARG001
        if level == 4:
            import sys
            sys.stderr.write(text.decode("utf-8", "replace"))

    _silence.callback = quiet  # the C side keeps the pointer: keep the Python object alive with it
    lib.llama_log_set(quiet, ctypes.c_void_p())


class LlamaSeq:
    """A conversation's KV cache: one sequence of the runtime's context."""

    def __init__(self, runtime: "LlamaCppRuntime", seq_id: int):
        self.seq_id = seq_id
        self.length = 0  # positions held (0 after an eviction)
        self._bytes_per_position = runtime.kv_bytes_per_position
        weakref.finalize(self, runtime._released.append, seq_id)

    def get_seq_length(self) -> int:
        return self.length

    def nbytes(self) -> int:
        return self.length * self._bytes_per_position


class LlamaCppRuntime:
    """prefill / decode / logits over a GGUF, for `ChatEngine` (see `engine.runtime.LlmRuntime`)."""

    kind = "llama.cpp"
    llm = None  # no torch module: beams and batches go through `engine.search`

    # n_ctx: KV cells shared by all conversations (allocated and resident from the start: 8192 cells in
    # q8_0 are 100 MB for SmolLM2-135M, 53 MB for Qwen2.5-0.5B, half of f16); when they run out the least
    # recently used conversations are cleared and prefill again on their next turn.
    def __init__(self, gguf: Path, *, threads: int, n_ctx: int = 8192, n_seqs: int = 64,
                 slot_id: int | None = None, max_context: int | None = None, kv_type: str = "q8_0"):
        lib = self.lib = _lib()
        _silence(lib)
        lib.llama_backend_init()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not self.model:
            raise LlamaCppError(f"llama.cpp could not load {gguf}")
        train_ctx = lib.llama_model_n_ctx_train(self.model)
        self.max_context = min(max_context or train_ctx, train_ctx, n_ctx)  # one turn must fit the cells
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = BATCH
        cparams.n_seq_max = n_seqs
        cparams.n_threads = cparams.n_threads_batch = threads
        if kv_type not in KV_TYPES:
            raise LlamaCppError(f"kv_type {kv_type!r}: choose from {sorted(KV_TYPES)}")
        cparams.type_k = cparams.type_v = KV_TYPES[kv_type][0]
        self.kv_type = kv_type
        cparams.kv_unified = True  # all sequences share one pool of cells (a shared start costs nothing)
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise LlamaCppError("llama.cpp could not make a context (memory?)")
        self.threads = threads
        self.mem = lib.llama_get_memory(self.ctx)
        self.n_ctx = lib.llama_n_ctx(self.ctx)
        self.n_embd = lib.llama_model_n_embd(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.kv_bytes_per_position = self._kv_bytes_per_position()
        self._logits_row = ctypes.c_float * self.n_vocab
        self.slot_id = slot_id  # placeholder id whose positions take speech frames
        self.gguf = Path(gguf)
        self.device = torch.device("cpu")
        self._tokens = lib.llama_batch_init(BATCH, 0, 1)
        self._embeds = lib.llama_batch_init(BATCH, self.n_embd, 1)
        self._free = list(range(n_seqs))
        self.max_rows = n_seqs // 2  # rows decoded together (`forward_many`); the other half stays for conversations
        self._live: OrderedDict[int, weakref.ref] = OrderedDict()  # seq id -> LlamaSeq, least recent first
        self._released: list[int] = []  # seq ids of dropped LlamaSeqs (appended by their finalizers)
        self._lock = threading.RLock()

    def _kv_bytes_per_position(self) -> int:
        lib = self.lib
        layers = lib.llama_model_n_layer(self.model)
        heads, kv_heads = lib.llama_model_n_head(self.model), lib.llama_model_n_head_kv(self.model)
        return int(2 * layers * kv_heads * (self.n_embd // heads) * KV_TYPES[self.kv_type][1])  # keys and values

    def weight_bytes(self) -> int:
        return int(self.lib.llama_model_size(self.model))

    # ---- sequences (the conversations' caches) -------------------------------------------------
    def _collect(self) -> None:
        while self._released:
            seq = self._released.pop()
            ref = self._live.get(seq)
            if ref is None or ref() is not None:  # already given back, or taken over by a newer LlamaSeq
                continue
            self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)
            del self._live[seq]
            self._free.append(seq)

    def _evict_one(self, keep: set[int]) -> bool:
        """Clear the least recently used sequence not in `keep`; False when there is none."""
        for seq, ref in self._live.items():
            handle = ref()
            if seq not in keep and handle is not None and handle.length > 0:
                self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)
                handle.length = 0
                return True
        return False

    def new_cache(self) -> LlamaSeq:
        with self._lock:
            self._collect()
            if not self._free:  # every sequence is held: take the least recently used one over
                for seq, ref in list(self._live.items()):
                    handle = ref()
                    if handle is not None:
                        self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)
                        handle.length, handle.seq_id = 0, -1
                    self._live.pop(seq)
                    self._free.append(seq)
                    break
            handle = LlamaSeq(self, self._free.pop())
            self._live[handle.seq_id] = weakref.ref(handle)
            return handle

    def held(self, past: LlamaSeq) -> int:
        return past.length if past.seq_id >= 0 else 0

    def crop(self, past: LlamaSeq, n: int) -> LlamaSeq:
        with self._lock:
            if n < past.length:
                self.lib.llama_memory_seq_rm(self.mem, past.seq_id, n, -1)
                past.length = n
            return past

    def copy_prefix(self, past: LlamaSeq, n: int) -> LlamaSeq | None:
        """A new sequence sharing the first n positions of `past` (no copy of the cells)."""
        with self._lock:
            if self.held(past) < n:
                return None
            self._live.move_to_end(past.seq_id)  # so that making room below never takes `past` itself
            out = self.new_cache()
            if self.held(past) < n:
                return None
            self.lib.llama_memory_seq_cp(self.mem, past.seq_id, out.seq_id, 0, n)
            out.length = n
            return out

    # ---- running the model ---------------------------------------------------------------------
    def forward(self, ids: list[int], frames: torch.Tensor | None, past: LlamaSeq, start: int) -> torch.Tensor:
        """Feed `ids` at positions start.. (placeholders take `frames` rows in order) -> (1, V) logits
        of the last position. `past` must hold exactly `start` positions."""
        with self._lock:
            self._collect()
            if past.seq_id < 0 or self.held(past) != start:
                raise LlamaCppError(f"the cache holds {self.held(past)} positions, not {start}")
            self._live.move_to_end(past.seq_id)
            rows = frames.detach().to("cpu", torch.float32).numpy() if frames is not None else None
            used = 0
            for lo, hi, speech in _runs(ids, self.slot_id):
                for a in range(lo, hi, BATCH):
                    b = min(hi, a + BATCH)
                    if speech:
                        self._decode_embeds(rows[used:used + b - a], past, start + a, last=b == len(ids))
                        used += b - a
                    else:
                        self._decode_tokens(ids[a:b], past, start + a, last=b == len(ids))
                    past.length = start + b
            return self._last_logits()

    def forward_embeds(self, rows: torch.Tensor, past: LlamaSeq, start: int) -> torch.Tensor:
        """Feed input embeddings (L, d) at positions start.. -> (1, V) logits of the last position: a
        prompt of tokens and speech frames as one batch (`runtime.FramesAsEmbeddings`)."""
        with self._lock:
            self._collect()
            if past.seq_id < 0 or self.held(past) != start:
                raise LlamaCppError(f"the cache holds {self.held(past)} positions, not {start}")
            self._live.move_to_end(past.seq_id)
            rows = rows.detach().to("cpu", torch.float32).numpy()
            n = rows.shape[0]
            for a in range(0, n, BATCH):
                b = min(n, a + BATCH)
                self._decode_embeds(rows[a:b], past, start + a, last=b == n)
                past.length = start + b
            return self._last_logits()

    def _last_logits(self) -> torch.Tensor:
        out = self.lib.llama_get_logits_ith(self.ctx, -1)
        row = self._logits_row.from_address(ctypes.addressof(out.contents))  # a view of llama.cpp's buffer
        return torch.frombuffer(bytearray(row), dtype=torch.float32)[None]  # copied: the next decode reuses it

    def forward_many(self, tokens: list[int], pasts: list[LlamaSeq]) -> torch.Tensor:
        """One new token for each of several sequences, in one llama_decode call (the weights are
        read once for all of them) -> (n, V) logits, row i for `pasts[i]` after `tokens[i]`."""
        n = len(tokens)
        if n != len(pasts) or not 0 < n <= BATCH:
            raise LlamaCppError(f"forward_many takes 1 to {BATCH} (token, cache) pairs, not {n}/{len(pasts)}")
        with self._lock:
            self._collect()
            batch = self._tokens
            for i, (tok, past) in enumerate(zip(tokens, pasts)):
                if past.seq_id < 0:
                    raise LlamaCppError("a batch row's cache was taken over (more rows than sequences?)")
                self._live.move_to_end(past.seq_id)
                batch.token[i] = tok
                batch.pos[i] = past.length
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = past.seq_id
                batch.logits[i] = 1
            batch.n_tokens = n
            self._decode(batch, *pasts)
            for past in pasts:
                past.length += 1
            out = self.lib.llama_get_logits(self.ctx)  # (n, V): one row per position with logits on
            rows = np.ctypeslib.as_array(out, shape=(n * self.n_vocab,))
            return torch.from_numpy(rows.copy()).view(n, self.n_vocab)  # copied: the next decode reuses it

    def _decode_tokens(self, ids: list[int], past: LlamaSeq, pos: int, last: bool) -> None:
        batch = self._tokens
        for i, t in enumerate(ids):
            batch.token[i] = t
        self._fill(batch, len(ids), past.seq_id, pos, last)
        self._decode(batch, past)

    def _decode_embeds(self, rows: np.ndarray, past: LlamaSeq, pos: int, last: bool) -> None:
        if rows.shape[1] != self.n_embd:
            raise LlamaCppError(f"speech frames are {rows.shape[1]} wide; the LLM takes {self.n_embd}")
        batch = self._embeds
        ctypes.memmove(batch.embd, np.ascontiguousarray(rows, dtype=np.float32).ctypes.data, rows.nbytes)
        self._fill(batch, rows.shape[0], past.seq_id, pos, last)
        self._decode(batch, past)

    @staticmethod
    def _fill(batch, n: int, seq: int, pos: int, last: bool) -> None:
        batch.n_tokens = n
        for i in range(n):
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 0
        batch.logits[n - 1] = 1 if last else 0

    def _decode(self, batch, *pasts: LlamaSeq) -> None:
        keep = {p.seq_id for p in pasts}
        while True:
            rc = self.lib.llama_decode(self.ctx, batch)
            if rc == 0:
                return
            if rc == 1 and self._evict_one(keep=keep):  # no room in the KV cache: free some
                continue
            raise LlamaCppError(f"llama_decode failed ({rc}): the turn does not fit the KV cache of "
                                f"{self.n_ctx} positions" if rc == 1 else f"llama_decode failed ({rc})")

    def close(self) -> None:
        with self._lock:
            if self.ctx:
                self.lib.llama_batch_free(self._tokens)
                self.lib.llama_batch_free(self._embeds)
                self.lib.llama_free(self.ctx)
                self.lib.llama_model_free(self.model)
                self.ctx = self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _runs(ids: list[int], slot: int | None) -> list[tuple[int, int, bool]]:
    """Maximal runs of positions [lo, hi) that are all speech slots or all tokens."""
    runs: list[tuple[int, int, bool]] = []
    lo = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (ids[i] == slot) != (ids[lo] == slot):
            runs.append((lo, i, slot is not None and ids[lo] == slot))
            lo = i
    return runs
