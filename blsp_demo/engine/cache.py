"""KV caches: one per conversation (an LRU of them), and the shared prompt starts.

Every cached position carries a key, so a new turn reuses exactly the positions that did not
change: `("t", token_id)` for a token, `("s", audio key, frame index)` for a speech frame. A
reset, an edit or another conversation can never reuse positions that differ.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch

Key = tuple  # ("t", token_id) or ("s", audio_key, frame_index)


@dataclass
class ChatCache:
    """A conversation's KV cache and memos. Owned by one conversation id."""

    past: object | None = None  # the runtime's cache: a transformers DynamicCache, or a llama.cpp LlamaSeq
    keys: list[Key] = field(default_factory=list)
    reply_ids: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (turn, reply) -> ids as generated
    speech: dict[str, torch.Tensor] = field(default_factory=dict)  # audio key -> (S, d_llm)
    transcripts: dict[str, str] = field(default_factory=dict)  # audio key -> ASR text
    lock: threading.Lock = field(default_factory=threading.Lock)

    def nbytes(self) -> int:
        """Memory held by the KV cache and the speech frames (what bounds the LRU by bytes)."""
        total = sum(t.numel() * t.element_size() for t in self.speech.values())
        if hasattr(self.past, "nbytes"):  # a llama.cpp sequence knows its own size
            return total + self.past.nbytes()
        for layer in getattr(self.past, "layers", None) or ():
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total


class ConversationCaches:
    """The conversations' caches by id, least recently used dropped first: at most `capacity`
    conversations and (when `max_bytes` is set) at most that many bytes of KV cache and speech."""

    def __init__(self, capacity: int = 32, max_bytes: int | None = None):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._caches: OrderedDict[str, ChatCache] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conv_id: str) -> ChatCache:
        with self._lock:
            cache = self._caches.pop(conv_id, None) or ChatCache()
            self._caches[conv_id] = cache  # most recently used last
            self._evict(keep=conv_id)
            return cache

    def trim(self, keep: str | None = None) -> None:
        """Drop the oldest conversations until the limits hold again (after a turn grew one)."""
        with self._lock:
            self._evict(keep)

    def _evict(self, keep: str | None) -> None:
        while len(self._caches) > self.capacity:
            self._caches.popitem(last=False)
        if self.max_bytes is None:
            return
        sizes = {k: c.nbytes() for k, c in self._caches.items()}
        for conv_id in list(self._caches):
            if sum(sizes.values()) <= self.max_bytes:
                break
            if conv_id != keep:
                del self._caches[conv_id]
                sizes.pop(conv_id)

    def forget(self, conv_id: str) -> None:
        with self._lock:
            self._caches.pop(conv_id, None)

    def __contains__(self, conv_id: str) -> bool:
        with self._lock:
            return conv_id in self._caches

    def __len__(self) -> int:
        with self._lock:
            return len(self._caches)


def common_prefix(a: list[Key], b: list[Key]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@torch.inference_mode()
def cache_prefix(past, n: int) -> object | None:
    """A new DynamicCache with the first n positions of `past`, in tensors of its own (a cropped view
    would keep the whole prompt's memory). None when a layer is not a plain full-attention one
    (sliding window, linear attention): copying those is not this function's business."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = getattr(past, "layers", None)
    if not layers or getattr(past, "offloading", False) or any(
            type(layer) is not DynamicLayer or layer.get_seq_length() < n for layer in layers):
        return None
    out = DynamicCache()
    for i, layer in enumerate(layers):
        out.update(layer.keys[..., :n, :].clone(), layer.values[..., :n, :].clone(), i)  # (B, H_kv, n, d_head)
    return out


class PrefixCaches:
    """KV caches of conversation-independent prompt starts (BOS, system prompt), shared by all the
    conversations of one engine: keys of the positions -> a DynamicCache holding only them. The
    caches held here are never handed out, only copied: decoding appends to a conversation's cache.
    The keys are the positions' tokens, so two system prompts (personas) never share a start.
    `copy(past, n)` makes a cache of the first n positions (the runtime's; by default for a
    DynamicCache); a start whose copy fails (a llama.cpp sequence cleared to make room) is dropped."""

    def __init__(self, capacity: int = 8, copy: Callable[[object, int], object | None] | None = None):
        self.capacity = capacity
        self._copy = copy or cache_prefix
        self._caches: OrderedDict[tuple[Key, ...], object] = OrderedDict()
        self._lock = threading.Lock()

    def copy(self, keys: tuple[Key, ...]) -> object | None:
        """A copy of the cache for these positions (a DynamicCache), or None."""
        with self._lock:
            past = self._caches.get(keys)
            if past is None:
                return None
            self._caches.move_to_end(keys)  # most recently used last
            out = self._copy(past, len(keys))
            if out is None:
                del self._caches[keys]
            return out

    def __contains__(self, keys: tuple[Key, ...]) -> bool:
        with self._lock:
            return keys in self._caches

    def add(self, keys: tuple[Key, ...], past) -> None:
        """Keep a copy of the first len(keys) positions of `past` (a conversation's cache)."""
        if not keys or keys in self:
            return
        prefix = self._copy(past, len(keys))
        if prefix is None:
            return
        with self._lock:
            self._caches.setdefault(keys, prefix)
            while len(self._caches) > self.capacity:
                self._caches.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._caches)
