"""From a model spec to an engine.

A spec is a registered name (`micro-blsp`, `micro-cascade`, `micro-text`), a local checkpoint
folder, or a Hugging Face Hub repo id. The family comes from the folder's config.json:
- BLSP: `whisper_config` + `llama_config` (the official layout; or the micro layout, whose
  config names bundled components and ships only the adapter);
- LLaSM: `model_type == "llaaa"` (its Whisper audio tower is a separate folder, see `load_llasm`);
- otherwise a plain causal LM, which hears speech through the cascade (Whisper ASR).
The `system` picks how speech reaches the LLM: `blsp`, `cascade` or `text` (LLaSM: `llasm`, its own).

The LLM of a registered model is a bundled GGUF: on a CPU it runs in llama.cpp straight from that
file (`engine.llamacpp`), elsewhere in transformers; $BLSP_LLM_RUNTIME or `runtime=` chooses
(`engine.runtime.runtime_choice`). Folders and Hub ids run in transformers.
"""

from __future__ import annotations

import json

from blsp_demo.engine.asr import ctc_asr, whisper_asr
from blsp_demo.engine.build import blsp_engine, cascade_engine, llasm_engine, text_engine
from blsp_demo.engine.chat import ChatEngine, EngineLimits
from blsp_demo.engine.llama_vocab import LlamaVocabTokenizer
from blsp_demo.engine.registry import REGISTRY, SYSTEMS
from blsp_demo.engine.runtime import runtime_choice
from blsp_demo.prompts import get_template
from blsp_demo.weights import sources
from blsp_demo.weights.checkpoints import (bundled_llm, detect_family, load_blsp_folder, load_llasm,
                                           load_micro_blsp, template_for_tokenizer)
from blsp_demo.weights.devices import Placement, placement
from blsp_demo.weights.llms import DEFAULT_LLM, BundledLlm, get_llm, weights_note


def gguf_runtime(bundled: BundledLlm, place: Placement, limits: EngineLimits, runtime: str | None = None):
    """A llama.cpp runtime over the bundled LLM's GGUF when the choice is llama.cpp (and the GGUF's
    pip packages are installed: the Hub fallback is no GGUF), else None."""
    from blsp_demo.weights import hub

    if runtime_choice(place.device, not hub.missing_packages(bundled.bundled), runtime) != "llama.cpp":
        return None
    import torch

    from blsp_demo.engine.llamacpp import LlamaCppRuntime
    from blsp_demo.model.tokens import SPEECH_PLACEHOLDER

    folder, file = bundled.gguf()
    return LlamaCppRuntime(folder / file, threads=torch.get_num_threads(), slot_id=SPEECH_PLACEHOLDER,
                           max_context=limits.max_context)


def build_engine(model_id: str, system: str, place: Placement, *, blsp=None, llm=None, tokenizer=None,
                 template: str = "chatml", extractor=None, revision: str = "", window: str | None = None,
                 limits: EngineLimits = EngineLimits(), asr=None) -> ChatEngine:
    """An engine of `system` over loaded parts (a BLSP model, or a plain LLM; the cascade's ASR when
    it is loaded already)."""
    tpl = get_template(template)
    common = dict(model_id=model_id, revision=revision, device=place.device, limits=limits)
    if system == "blsp":
        return blsp_engine(blsp, tokenizer, extractor, template=tpl, window=window, runtime=llm, **common)
    llm = llm if llm is not None else blsp.llama_model
    if system == "cascade":
        return cascade_engine(llm, tokenizer, tpl, asr or whisper_asr(place.device), **common)
    if system == "text":
        return text_engine(llm, tokenizer, tpl, **common)
    if system == "ctc":
        return cascade_engine(llm, tokenizer, tpl, ctc_asr(blsp, extractor, tokenizer), system="ctc", **common)
    raise ValueError(f"unknown system {system!r}; choose from {SYSTEMS}")


def load_engine(spec: str, system: str | None = None, *, device: str | None = None, dtype: str | None = None,
                revision: str | None = None, window: str | None = None, audio_tower: str | None = None,
                template: str | None = None, limits: EngineLimits = EngineLimits(),
                runtime: str | None = None) -> ChatEngine:
    """A ready engine for a model spec (see the module docstring); `runtime`: auto | llama.cpp | torch
    for a registered model's LLM (default $BLSP_LLM_RUNTIME, else auto)."""
    place = placement(device, dtype)
    kw = dict(window=window, limits=limits)
    if spec in REGISTRY:
        entry = REGISTRY[spec]
        system = system or entry.system
        if entry.folder is not None:
            model, tok, fx, mid = load_micro_blsp(entry.folder, place)
            fast = gguf_runtime(get_llm(DEFAULT_LLM), place, limits, runtime)  # the micro layout's LLM
            return build_engine(spec if system == entry.system else f"{spec}:{system}", system, place, blsp=model,
                                llm=fast, tokenizer=tok, extractor=fx, template=model.config.prompt_template,
                                revision=mid, **kw)
        bundled = get_llm(entry.llm)
        # Whisper first: its loading peaks above what it keeps, and that peak should not come on top of the LLM
        asr = whisper_asr(place.device) if system == "cascade" else None
        fast = gguf_runtime(bundled, place, limits, runtime)
        if fast is not None:  # llama.cpp over the GGUF: no torch copy of the LLM, nor of its vocabulary
            llm, tok = fast, LlamaVocabTokenizer(fast)
        else:
            llm, tok = bundled_llm(place.dtype, bundled.name)
            llm = llm.to(place.device)
        engine = build_engine(spec, system, place, llm=llm, tokenizer=tok, asr=asr,
                              template=bundled.template, revision=bundled.revision, **kw)
        # after loading, the parts' weights sources: "" when all came from the pip packages
        engine.revision += weights_note(bundled.name, whisper=system == "cascade")
        return engine
    folder = sources.resolve_checkpoint(spec, revision)
    config = json.loads((folder / "config.json").read_text())
    family = detect_family(config)
    if family == "blsp":
        model, tok, fx, mid = load_blsp_folder(folder, place)
        return build_engine(spec, system or "blsp", place, blsp=model, tokenizer=tok, extractor=fx,
                            template=getattr(model.config, "prompt_template", "blsp"), revision=mid, **kw)
    if family == "llasm":
        if system not in (None, "llasm"):
            raise ValueError(f"{spec} is a LLaSM checkpoint: speech reaches it through its own audio tower "
                             f"(system 'llasm'), not {system!r}")
        model, tok, tower, tpl, mid = load_llasm(folder, place, audio_tower, template)
        return llasm_engine(model, tok, tower, template=get_template(tpl), model_id=spec, revision=mid,
                            device=place.device, limits=limits)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = AutoModelForCausalLM.from_pretrained(folder, dtype=place.dtype).to(place.device)
    tok = AutoTokenizer.from_pretrained(folder)
    if system == "blsp":
        raise ValueError(f"{spec} is a plain language model: it has no speech adapter (use cascade or text)")
    return build_engine(spec, system or "cascade", place, llm=llm, tokenizer=tok,
                        template=template or template_for_tokenizer(tok), revision=revision or "", **kw)
