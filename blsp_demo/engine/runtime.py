"""The LLM runtime a `ChatEngine` calls: prefill and decode over a per-conversation KV cache,
returning the last position's logits (sampling stays in `engine.decoding.pick_next`).

- `TorchRuntime`: the transformers model (GPUs, training, and any LLM that is no GGUF); its cache
  is a `DynamicCache`, speech enters through the frontend's `embed` (placeholders -> frames);
- `engine.llamacpp.LlamaCppRuntime`: llama.cpp over the shipped GGUF (the default on a CPU);
  its cache is a `LlamaSeq`, one sequence of one shared llama.cpp context.

`runtime_choice` says which one an engine gets: $BLSP_LLM_RUNTIME (`auto` | `llama.cpp` | `torch`),
`auto` meaning llama.cpp on a CPU when the LLM is a GGUF and llama-cpp-python is installed.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from typing import Callable, Protocol

import torch

RUNTIME_ENV = "BLSP_LLM_RUNTIME"
RUNTIMES = ("auto", "llama.cpp", "torch")


class LlmRuntime(Protocol):
    kind: str  # "transformers" | "llama.cpp"
    device: torch.device
    max_context: int
    llm: object | None  # the torch module when there is one (HF generate, hooks, evaluations)

    def new_cache(self) -> object: ...

    def held(self, past) -> int: ...  # positions the cache holds

    def crop(self, past, n: int) -> object: ...  # keep the first n positions

    def copy_prefix(self, past, n: int) -> object | None: ...  # a cache of its own with the first n

    def forward(self, ids: list[int], frames: torch.Tensor | None, past, start: int) -> torch.Tensor: ...


class TorchRuntime:
    """The transformers model with a DynamicCache (today's code path)."""

    kind = "transformers"

    def __init__(self, llm, embed: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                 device: torch.device | None = None):
        self.llm = llm.eval()
        self.embed = embed
        self.device = device or next(llm.parameters()).device
        self.max_context = getattr(llm.config, "max_position_embeddings", 2048)
        # Only the last position's logits are needed (a 24-position prefill would otherwise compute
        # 24 x vocab logits); LLMs whose forward lacks the argument (remote code) compute them all.
        self._last_logits_only = ({"logits_to_keep": 1} if "logits_to_keep" in
                                  inspect.signature(self.llm.forward).parameters else {})

    def new_cache(self):
        from transformers import DynamicCache
        return DynamicCache(config=self.llm.config)

    def held(self, past) -> int:
        return past.get_seq_length()

    def crop(self, past, n: int):
        past.crop(n - past.get_seq_length())  # a negative count removes positions
        return past

    def copy_prefix(self, past, n: int):
        from blsp_demo.engine.cache import cache_prefix
        return cache_prefix(past, n)

    @torch.inference_mode()
    def forward(self, ids: list[int], frames, past, start: int) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        embeds = self.embed(x, frames)  # (1, L_new, d_llm)
        positions = torch.arange(start, start + len(ids), device=self.device)[None]
        attn = torch.ones(1, start + len(ids), dtype=torch.long, device=self.device)
        out = self.llm(inputs_embeds=embeds, attention_mask=attn, position_ids=positions,
                       past_key_values=past, use_cache=True, **self._last_logits_only)
        return out.logits[:, -1]


class FramesAsEmbeddings:
    """A runtime that takes token ids or input embeddings (llama.cpp: one or the other in a batch, never
    both), fed a prompt with speech frames as one batch of embeddings: the frontend's `embed`
    (the LLM's token embeddings, placeholders replaced by the frames). Otherwise a turn
    [tokens, frames, tokens] costs three llama_decode calls (24 positions on 2 cores: 104 against
    92 ms). Prompts without frames go through as ids; everything else is the wrapped runtime's.
    `embed` must embed tokens as the runtime does: the micro layout's torch LLM is its GGUF de-quantized."""

    def __init__(self, runtime, embed: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]):
        self.runtime = runtime
        self.embed = embed

    def __getattr__(self, name: str):
        return getattr(self.runtime, name)

    @torch.inference_mode()
    def forward(self, ids: list[int], frames, past, start: int) -> torch.Tensor:
        if frames is None:
            return self.runtime.forward(ids, None, past, start)
        rows = self.embed(torch.tensor([ids]), frames)[0]  # (1, L_new, d) -> (L_new, d)
        return self.runtime.forward_embeds(rows, past, start)


def as_runtime(llm, embed, device: torch.device | None = None, frames: bool = False) -> LlmRuntime:
    """A runtime as it is, or a torch LLM wrapped in a `TorchRuntime`; `frames`: the engine's prompts
    carry speech frames, so a runtime that takes embeddings gets them as one batch (`FramesAsEmbeddings`)."""
    if isinstance(llm, torch.nn.Module):
        return TorchRuntime(llm, embed, device)
    if frames and hasattr(llm, "forward_embeds"):
        return FramesAsEmbeddings(llm, embed)
    return llm


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def runtime_choice(device: torch.device, has_gguf: bool, preference: str | None = None) -> str:
    """`llama.cpp` or `torch` for an LLM on `device` (see the module docstring)."""
    pref = (preference or os.environ.get(RUNTIME_ENV) or "auto").lower().replace("llamacpp", "llama.cpp")
    if pref not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={pref!r}: choose from {RUNTIMES}")
    if pref == "llama.cpp":
        if device.type != "cpu" or not has_gguf:
            raise ValueError("the llama.cpp runtime runs a GGUF LLM on the CPU; this one is "
                             f"{'not a GGUF' if not has_gguf else 'on ' + device.type}")
        return "llama.cpp"
    if pref == "torch":
        return "torch"
    return "llama.cpp" if device.type == "cpu" and has_gguf and llamacpp_available() else "torch"
