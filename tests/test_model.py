"""The BLSP model against the official checkpoint layout and an independent computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blsp_demo.model.adapter import Conv1dSubsampler
from blsp_demo.model.blsp import BlspConfig, BlspModel
from blsp_demo.model.tokens import SPEECH_PLACEHOLDER
from blsp_demo.model.encoder import encode_features


def test_official_layout_loads_with_no_missing_or_unexpected_keys(official_checkpoint):
    model, info = BlspModel.from_pretrained(official_checkpoint, output_loading_info=True)
    assert info["missing_keys"] == set() and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = json.loads((official_checkpoint / "config.json").read_text())
    assert "prompt_template" not in config  # the official config has no project fields...
    assert model.config.prompt_template == "blsp" and model.config.encoder_window == "full"  # ...defaults apply
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    tok = AutoTokenizer.from_pretrained(official_checkpoint)
    assert tok("###[Human]:hello").input_ids[0] == tok.bos_token_id
    assert WhisperFeatureExtractor.from_pretrained(official_checkpoint).feature_size == 80


def _reference_logits(state: dict, config: dict, features, frames, prefix_ids, suffix_ids):
    """The official forward written out by hand from the state dict: WhisperEncoder on 30 s,
    cut to length, 3 x (conv k5 s2 + GLU), x + fc2(gelu(fc1 x)), LayerNorm, concat, Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    enc = WhisperEncoder(WhisperConfig(**config["whisper_config"])).eval()
    enc.load_state_dict({k[len("whisper_model."):]: v for k, v in state.items() if k.startswith("whisper_model.")})
    llm = LlamaForCausalLM(LlamaConfig(**config["llama_config"])).eval()
    llm.load_state_dict({k[len("llama_model."):]: v for k, v in state.items() if k.startswith("llama_model.")})
    x = enc(features).last_hidden_state  # (1, 1500, d)
    n = (int(frames) - 1) // 2 + 1
    x = x[:, :n].transpose(1, 2)
    for i in range(3):
        x = F.glu(F.conv1d(x, state[f"subsampler.conv_layers.{i}.weight"], state[f"subsampler.conv_layers.{i}.bias"],
                           stride=2, padding=2), dim=1)
    x = x.transpose(1, 2)
    x = x + F.linear(F.gelu(F.linear(x, state["adapter.fc1.weight"])), state["adapter.fc2.weight"])
    x = F.layer_norm(x, (x.shape[-1],), state["speech_ln.weight"], state["speech_ln.bias"], 1e-5)
    emb = llm.get_input_embeddings()
    inputs = torch.cat([emb(prefix_ids), x, emb(suffix_ids)], dim=1)
    return llm(inputs_embeds=inputs).logits


def test_logits_match_an_independent_reference(official_checkpoint):
    from transformers import WhisperFeatureExtractor

    model = BlspModel.from_pretrained(official_checkpoint).eval()
    state = torch.load(official_checkpoint / "pytorch_model.bin")
    config = json.loads((official_checkpoint / "config.json").read_text())
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32)
    fx = WhisperFeatureExtractor.from_pretrained(official_checkpoint)
    feats = fx(audio, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
    frames = feats["attention_mask"].sum(-1)
    prefix, suffix = torch.tensor([[1, 5, 40, 41]]), torch.tensor([[42, 43, 44]])
    with torch.no_grad():
        speech, lengths = model.speech_embeddings(feats["input_features"], frames)
        ids = torch.cat([prefix, torch.full((1, int(lengths[0])), SPEECH_PLACEHOLDER), suffix], dim=1)
        ours = model(ids, speech_features=feats["input_features"], speech_frames=frames).logits
        ref = _reference_logits(state, config, feats["input_features"], frames[0], prefix, suffix)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()


def test_placeholder_count_must_match_frames(official_checkpoint):
    model = BlspModel.from_pretrained(official_checkpoint).eval()
    ids = torch.tensor([[1, SPEECH_PLACEHOLDER, SPEECH_PLACEHOLDER, 7]])
    with pytest.raises(ValueError, match="2 speech placeholders but 3 speech frames"):
        model.embed_with_speech(ids, torch.zeros(3, 64))
    with pytest.raises(ValueError, match="placeholders"):
        model.embed_with_speech(ids, None)


def test_subsampler_lengths_follow_the_official_formula():
    sub = Conv1dSubsampler(8, 16, 12, [5, 5, 5])
    for t in [1, 2, 7, 8, 9, 150, 1500]:
        out = sub(torch.zeros(1, t, 8))
        expected = t
        for _ in range(3):
            expected = (expected - 1) // 2 + 1
        assert out.shape == (1, expected, 12)
        assert int(sub.output_lengths(torch.tensor([t]))[0]) == expected


def test_trimmed_window_equals_full_when_audio_fills_30s(official_checkpoint):
    """With exactly 3000 real frames, slicing positions changes nothing."""
    model = BlspModel.from_pretrained(official_checkpoint).eval()
    feats = torch.randn(1, 80, 3000)
    frames = torch.tensor([3000])
    with torch.no_grad():
        full, n_full = encode_features(model.whisper_model, feats, frames, "full")
        trim, n_trim = encode_features(model.whisper_model, feats, frames, "trimmed")
    assert torch.equal(n_full, n_trim) and torch.allclose(full, trim, atol=1e-5)
    with torch.no_grad():
        short, n_short = encode_features(model.whisper_model, feats, torch.tensor([400]), "trimmed")
    assert short.shape[1] == int(n_short[0]) == 200
    with pytest.raises(ValueError, match="encoder window"):
        encode_features(model.whisper_model, feats, frames, "half")


def test_any_causal_lm_can_be_the_llm():
    from tiny import whisper_config

    qwen = dict(model_type="qwen2", vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    config = BlspConfig(whisper_config=whisper_config(), llama_config=qwen, adapter_inner_dim=8)
    model = BlspModel(config)
    assert type(model.llama_model).__name__ == "Qwen2ForCausalLM"
    assert config.to_dict()["llama_config"]["model_type"] == "qwen2"
    assert set(k.split(".")[0] for k in model.state_dict()) == {"whisper_model", "llama_model", "subsampler",
                                                                "adapter", "speech_ln"}
