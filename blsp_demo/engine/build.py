"""Engines from their parts: an LLM, a tokenizer, a template and a speech frontend.

    blsp_engine(model, tokenizer, extractor, template=get_template("blsp"), model_id="x")
    cascade_engine(llm, tokenizer, template, asr, model_id="y")   # system "cascade" (or "ctc")
    text_engine(llm, tokenizer, template, model_id="z")
    llasm_engine(model, tokenizer, tower, template=..., model_id="w")

`llm` is a torch LLM or an `engine.runtime.LlmRuntime` (llama.cpp over the GGUF); `blsp_engine`
takes a runtime for the LLM through `runtime=` (the BLSP model still encodes the speech).
"""

from __future__ import annotations

import torch

from blsp_demo.audio import AudioLimits
from blsp_demo.engine.chat import ChatEngine, EngineLimits
from blsp_demo.engine.frontends import AsrTranscript, BlspFrames, KnownTranscript, LlasmFrames, token_embeddings
from blsp_demo.engine.llasm import check_audio_tokens, plan_calls
from blsp_demo.engine.plan import Planner, Prompting, plan_pieces
from blsp_demo.prompts import PromptTemplate

PLANNERS: dict[str, Planner] = {"pieces": plan_pieces, "llasm-calls": plan_calls}


def text_embed(llm):
    """The embed function of a text-only LLM; a runtime that is no torch module embeds tokens itself."""
    if isinstance(llm, torch.nn.Module):
        return token_embeddings(llm)

    def refuse(ids, frames):
        raise ValueError("this LLM runtime takes token ids, not embeddings from the engine")

    return refuse


def engine_of(llm, tokenizer, template: PromptTemplate, frontend, *, model_id: str, revision: str = "",
              device=None, limits: EngineLimits = EngineLimits()) -> ChatEngine:
    if template.tokenization not in PLANNERS:
        raise ValueError(f"template {template.name!r} names an unknown tokenization {template.tokenization!r}")
    prompting = Prompting(tokenizer, template, frontend, PLANNERS[template.tokenization])
    return ChatEngine(llm, prompting, model_id=model_id, revision=revision, device=device, limits=limits)


def blsp_engine(model, tokenizer, feature_extractor, *, template: PromptTemplate, window: str | None = None,
                audio_limits: AudioLimits = AudioLimits(), runtime=None, **kw) -> ChatEngine:
    """BLSP: speech turns enter the LLM as adapter outputs (`runtime`: another runtime for the LLM)."""
    frontend = BlspFrames(model, feature_extractor, window, audio_limits)
    return engine_of(runtime if runtime is not None else model.llama_model, tokenizer, template, frontend, **kw)


def cascade_engine(llm, tokenizer, template: PromptTemplate, asr, *, system: str = "cascade",
                   audio_limits: AudioLimits = AudioLimits(), **kw) -> ChatEngine:
    """Whisper+LLM (or CTC+LLM with `system="ctc"`): each speech turn is transcribed by `asr`."""
    frontend = AsrTranscript(system, asr, text_embed(llm), audio_limits)
    return engine_of(llm, tokenizer, template, frontend, **kw)


def text_engine(llm, tokenizer, template: PromptTemplate, **kw) -> ChatEngine:
    """Text+LLM: the known transcript of each speech turn goes to the LLM."""
    kw.pop("audio_limits", None)
    return engine_of(llm, tokenizer, template, KnownTranscript(text_embed(llm)), **kw)


def llasm_engine(model, tokenizer, tower, *, template: PromptTemplate,
                 audio_limits: AudioLimits = AudioLimits(), **kw) -> ChatEngine:
    """LLaSM: Whisper (encoder + decoder over 64 start tokens) -> mm_projector -> Llama."""
    frontend = LlasmFrames(model, tower, check_audio_tokens(tokenizer), audio_limits)
    return engine_of(model, tokenizer, template, frontend, **kw)
