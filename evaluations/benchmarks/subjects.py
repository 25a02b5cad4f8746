"""The models benchmarked: a BLSP engine for a model spec.

- `micro-blsp`: the registered micro model; while its adapter is not trained yet, the same
  shapes with a random adapter (the cost of a forward pass does not depend on the weights);
- `paper-shape`: a whisper-small encoder and a Llama-2-7B-shaped LLM with random weights, for a
  GPU machine (no 7B weights can reach one); full 30 s windows, as the official checkpoint needs;
- anything else: `load_engine(spec, "blsp")` (a BLSP folder, official layout or micro layout).

The micro model's LLM runs as the app runs it (`engine.runtime.runtime_choice`: llama.cpp over the
GGUF on a CPU unless BLSP_LLM_RUNTIME=torch); the official path always runs the transformers LLM.
"""

from __future__ import annotations

import torch

from blsp_demo.weights.devices import Placement, placement
from blsp_demo.engine.build import blsp_engine
from blsp_demo.engine.chat import ChatEngine
from blsp_demo.prompts import get_template

PAPER_WHISPER = dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072,
                     decoder_layers=12, decoder_attention_heads=12, decoder_ffn_dim=3072, num_mel_bins=80,
                     max_source_positions=1500)  # whisper-small
PAPER_LLAMA = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                   rms_norm_eps=1e-5, tie_word_embeddings=False)  # Llama-2-7B


def engine_for(model, tokenizer, extractor, place: Placement, model_id: str, revision: str = "",
               window: str | None = None, runtime=None) -> ChatEngine:
    return blsp_engine(model, tokenizer, extractor, window=window, template=get_template(model.config.prompt_template),
                       model_id=model_id, revision=revision, device=place.device, runtime=runtime)


def micro_runtime(place: Placement):
    """The llama.cpp runtime over the bundled SmolLM2 GGUF when the app would use it here, else None."""
    from blsp_demo.engine.chat import EngineLimits
    from blsp_demo.engine.loading import gguf_runtime
    from blsp_demo.weights.llms import DEFAULT_LLM, get_llm

    return gguf_runtime(get_llm(DEFAULT_LLM), place, EngineLimits())


def micro_blsp(place: Placement) -> tuple[ChatEngine, str]:
    from blsp_demo.engine.registry import REGISTRY
    from blsp_demo.weights.checkpoints import assemble_micro, load_micro_blsp, micro_config
    from blsp_demo.weights.sources import WeightsError

    try:
        model, tok, fx, mid = load_micro_blsp(REGISTRY["micro-blsp"].folder, place)
        return engine_for(model, tok, fx, place, "micro-blsp", mid, runtime=micro_runtime(place)), f"micro-blsp ({mid})"
    except WeightsError:
        model, tok, fx = assemble_micro(micro_config(), place)
        return (engine_for(model, tok, fx, place, "micro-blsp", "random-adapter", runtime=micro_runtime(place)),
                "micro-blsp shapes, random adapter (trained adapter not there yet)")


def paper_shape_config(vocab_size: int, bos: int, eos: int):
    from blsp_demo.model.blsp import BlspConfig

    return BlspConfig(whisper_config=PAPER_WHISPER, adapter_inner_dim=512, prompt_template="blsp",
                      encoder_window="full",
                      llama_config={**PAPER_LLAMA, "vocab_size": vocab_size, "bos_token_id": bos, "eos_token_id": eos})


def paper_shape(place: Placement) -> tuple[ChatEngine, str]:
    """Random weights made directly on the device in its dtype (a 7B model in fp32 on a CPU would not fit
    most machines). The tokenizer is the bundled SmolLM2 one: the vocabulary is 49152, not 32000."""
    from transformers import WhisperFeatureExtractor

    from blsp_demo.weights import sources
    from blsp_demo.model.blsp import BlspModel

    tok = sources.load_gguf_tokenizer(*sources.smollm2_gguf())
    config = paper_shape_config(len(tok), tok.bos_token_id, tok.eos_token_id)
    default = torch.get_default_dtype()
    torch.set_default_dtype(place.dtype)
    try:
        with torch.device(place.device):
            model = BlspModel(config)
    finally:
        torch.set_default_dtype(default)
    fx = WhisperFeatureExtractor(feature_size=80)
    return engine_for(model.eval(), tok, fx, place, "paper-shape", "random"), \
        "paper shape (whisper-small encoder + Llama-2-7B shape, random weights)"


def load_subject(spec: str, device: str | None = None, dtype: str | None = None) -> tuple[ChatEngine, str]:
    place = placement(device, dtype)
    if spec == "micro-blsp":
        return micro_blsp(place)
    if spec == "paper-shape":
        return paper_shape(place)
    from blsp_demo.engine.loading import load_engine

    engine = load_engine(spec, "blsp", device=device, dtype=dtype)
    return engine, spec
