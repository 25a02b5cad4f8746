"""From a model spec to an engine.

A spec is a registered name (`micro-blsp`, `micro-cascade`, `micro-text`), a local checkpoint
folder, or a Hugging Face Hub repo id. The family comes from the folder's config.json:
- BLSP: `whisper_config` + `llama_config` (the official layout; or the micro layout, whose
  config names bundled components and ships only the adapter);
- LLaSM: `model_type == "llaaa"` (its Whisper audio tower is a separate folder, see `load_llasm`);
- otherwise a plain causal LM, which hears speech through the cascade (Whisper ASR).
The `system` picks how speech reaches the LLM: `blsp`, `cascade` or `text` (LLaSM: `llasm`, its own).
"""

from __future__ import annotations

import json

from blsp_demo.engine.asr import ctc_asr, whisper_asr
from blsp_demo.engine.build import blsp_engine, cascade_engine, llasm_engine, text_engine
from blsp_demo.engine.chat import ChatEngine, EngineLimits
from blsp_demo.engine.registry import REGISTRY, SYSTEMS
from blsp_demo.prompts import get_template
from blsp_demo.weights import sources
from blsp_demo.weights.checkpoints import (bundled_llm, detect_family, load_blsp_folder, load_llasm,
                                           load_micro_blsp, template_for_tokenizer)
from blsp_demo.weights.devices import Placement, placement
from blsp_demo.weights.llms import get_llm

def build_engine(model_id: str, system: str, place: Placement, *, blsp=None, llm=None, tokenizer=None,
                 template: str = "chatml", extractor=None, revision: str = "", window: str | None = None,
                 limits: EngineLimits = EngineLimits()) -> ChatEngine:
    """An engine of `system` over loaded parts (a BLSP model, or a plain LLM)."""
    tpl = get_template(template)
    common = dict(model_id=model_id, revision=revision, device=place.device, limits=limits)
    if system == "blsp":
        return blsp_engine(blsp, tokenizer, extractor, template=tpl, window=window, **common)
    llm = llm if llm is not None else blsp.llama_model
    if system == "cascade":
        return cascade_engine(llm, tokenizer, tpl, whisper_asr(place.device), **common)
    if system == "text":
        return text_engine(llm, tokenizer, tpl, **common)
    if system == "ctc":
        return cascade_engine(llm, tokenizer, tpl, ctc_asr(blsp, extractor, tokenizer), system="ctc", **common)
    raise ValueError(f"unknown system {system!r}; choose from {SYSTEMS}")


def load_engine(spec: str, system: str | None = None, *, device: str | None = None, dtype: str | None = None,
                revision: str | None = None, window: str | None = None, audio_tower: str | None = None,
                template: str | None = None, limits: EngineLimits = EngineLimits()) -> ChatEngine:
    """A ready engine for a model spec (see the module docstring)."""
    place = placement(device, dtype)
    kw = dict(window=window, limits=limits)
    if spec in REGISTRY:
        entry = REGISTRY[spec]
        system = system or entry.system
        if entry.folder is not None:
            model, tok, fx, mid = load_micro_blsp(entry.folder, place)
            return build_engine(spec if system == entry.system else f"{spec}:{system}", system, place, blsp=model,
                                tokenizer=tok, extractor=fx, template=model.config.prompt_template,
                                revision=mid, **kw)
        bundled = get_llm(entry.llm)
        llm, tok = bundled_llm(place.dtype, bundled.name)
        return build_engine(spec, system, place, llm=llm.to(place.device), tokenizer=tok, template=bundled.template,
                            revision=bundled.revision, **kw)
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
