"""Engines from their parts: an LLM, a tokenizer, a template and a speech frontend.

    blsp_engine(model, tokenizer, extractor, template=get_template("blsp"), model_id="x")
    cascade_engine(llm, tokenizer, template, asr, model_id="y")   # system "cascade" (or "ctc")
    text_engine(llm, tokenizer, template, model_id="z")
    llasm_engine(model, tokenizer, tower, template=..., model_id="w")
"""

from __future__ import annotations

from blsp_demo.audio import AudioLimits
from blsp_demo.engine.chat import ChatEngine, EngineLimits
from blsp_demo.engine.frontends import AsrTranscript, BlspFrames, KnownTranscript, LlasmFrames, token_embeddings
from blsp_demo.engine.llasm import check_audio_tokens, plan_calls
from blsp_demo.engine.plan import Planner, Prompting, plan_pieces
from blsp_demo.prompts import PromptTemplate

PLANNERS: dict[str, Planner] = {"pieces": plan_pieces, "llasm-calls": plan_calls}


def engine_of(llm, tokenizer, template: PromptTemplate, frontend, *, model_id: str, revision: str = "",
              device=None, limits: EngineLimits = EngineLimits()) -> ChatEngine:
    if template.tokenization not in PLANNERS:
        raise ValueError(f"template {template.name!r} names an unknown tokenization {template.tokenization!r}")
    prompting = Prompting(tokenizer, template, frontend, PLANNERS[template.tokenization])
    return ChatEngine(llm, prompting, model_id=model_id, revision=revision, device=device, limits=limits)


def blsp_engine(model, tokenizer, feature_extractor, *, template: PromptTemplate, window: str | None = None,
                audio_limits: AudioLimits = AudioLimits(), **kw) -> ChatEngine:
    """BLSP: speech turns enter the LLM as adapter outputs."""
    frontend = BlspFrames(model, feature_extractor, window, audio_limits)
    return engine_of(model.llama_model, tokenizer, template, frontend, **kw)


def cascade_engine(llm, tokenizer, template: PromptTemplate, asr, *, system: str = "cascade",
                   audio_limits: AudioLimits = AudioLimits(), **kw) -> ChatEngine:
    """Whisper+LLM (or CTC+LLM with `system="ctc"`): each speech turn is transcribed by `asr`."""
    frontend = AsrTranscript(system, asr, token_embeddings(llm), audio_limits)
    return engine_of(llm, tokenizer, template, frontend, **kw)


def text_engine(llm, tokenizer, template: PromptTemplate, **kw) -> ChatEngine:
    """Text+LLM: the known transcript of each speech turn goes to the LLM."""
    kw.pop("audio_limits", None)
    return engine_of(llm, tokenizer, template, KnownTranscript(token_embeddings(llm)), **kw)


def llasm_engine(model, tokenizer, tower, *, template: PromptTemplate,
                 audio_limits: AudioLimits = AudioLimits(), **kw) -> ChatEngine:
    """LLaSM: Whisper (encoder + decoder over 64 start tokens) -> mm_projector -> Llama."""
    frontend = LlasmFrames(model, tower, check_audio_tokens(tokenizer), audio_limits)
    return engine_of(model, tokenizer, template, frontend, **kw)
