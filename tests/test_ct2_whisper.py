"""CTranslate2 Whisper reading and conversion, on a tiny random model written by the test itself."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from blsp_demo.weights import ct2_whisper

torch.set_num_threads(1)

D, HEADS, LAYERS, N_MELS, AUDIO_CTX, TEXT_CTX = 64, 4, 2, 80, 16, 8
VOCAB = 51865  # Whisper's multilingual vocabulary: its special token ids must exist
_CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2,
          np.dtype("int32"): 3, np.dtype("float16"): 4}


# ------------------------------------------------------------------ a model.bin writer of our own
def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> bytes:
    """model.bin bytes (binary version 6) for arrays of the dtypes in _CODES."""
    out = [struct.pack("<I", version), _string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name, array in variables.items():
        out += [_string(name), struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape),
                struct.pack("<BI", _CODES[array.dtype], array.nbytes), array.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(alias) + _string(target) for alias, target in aliases.items()]
    return b"".join(out)


def tiny_whisper_variables(seed: int = 0) -> dict[str, np.ndarray]:
    """A random Whisper in CTranslate2's names: float16 like faster-whisper's files, plus one
    int8-quantized weight; key biases are zero, as CTranslate2 stores them."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    def linear(name, n_out, n_in):
        return {f"{name}/weight": w(n_out, n_in), f"{name}/bias": w(n_out)}

    def norm(name):
        return {f"{name}/gamma": (1 + w(D)).astype(np.float16), f"{name}/beta": w(D)}

    def fused(name, n):  # n projections stacked, the key's bias (index 1 of qkv, 0 of kv) zeroed
        layer = linear(name, n * D, D)
        key = 1 if n == 3 else 0
        layer[f"{name}/bias"][key * D:(key + 1) * D] = 0
        return layer

    def block(name, cross):
        v = {**fused(f"{name}/self_attention/linear_0", 3),
             **linear(f"{name}/self_attention/linear_1", D, D),
             **norm(f"{name}/self_attention/layer_norm"),
             **linear(f"{name}/ffn/linear_0", 4 * D, D), **linear(f"{name}/ffn/linear_1", D, 4 * D),
             **norm(f"{name}/ffn/layer_norm")}
        if cross:
            v |= {**linear(f"{name}/attention/linear_0", D, D),
                  **fused(f"{name}/attention/linear_1", 2),
                  **linear(f"{name}/attention/linear_2", D, D), **norm(f"{name}/attention/layer_norm")}
        return v

    v = {"encoder/num_heads": np.array(HEADS, np.int32),
         "encoder/conv1/weight": w(D, N_MELS, 3), "encoder/conv1/bias": w(D),
         "encoder/conv2/weight": w(D, D, 3), "encoder/conv2/bias": w(D),
         "encoder/position_encodings/encodings": w(AUDIO_CTX, D)}
    for i in range(LAYERS):
        v |= block(f"encoder/layer_{i}", cross=False)
    v |= norm("encoder/layer_norm")
    v |= {"decoder/num_heads": np.array(HEADS, np.int32), "decoder/embeddings/weight": w(VOCAB, D),
          "decoder/position_encodings/encodings": w(TEXT_CTX, D)}
    for i in range(LAYERS):
        v |= block(f"decoder/layer_{i}", cross=True)
    v |= norm("decoder/layer_norm")
    # int8, one scale per output row, as CTranslate2 quantizes: q = round(w * 127 / max|w|)
    weight = v["encoder/layer_0/ffn/linear_0/weight"].astype(np.float32)
    scale = (127 / np.abs(weight).max(axis=1)).astype(np.float32)
    v["encoder/layer_0/ffn/linear_0/weight"] = np.round(weight * scale[:, None]).astype(np.int8)
    v["encoder/layer_0/ffn/linear_0/weight_scale"] = scale
    return v


TIED = {"decoder/projection/weight": "decoder/embeddings/weight"}


def tiny_ct2_bytes(seed: int = 0) -> bytes:
    return write_ct2(tiny_whisper_variables(seed), TIED)


@pytest.fixture(scope="module")
def tiny() -> ct2_whisper.Ct2Model:
    return ct2_whisper.parse_model(tiny_ct2_bytes())


# ------------------------------------------------------------------------------------ reading
def test_parse_reads_every_variable_alias_and_header(tiny):
    written = tiny_whisper_variables()
    assert tiny.meta == {"version": 6, "name": "WhisperSpec", "revision": 3}
    assert tiny.aliases == TIED
    assert tiny.variables.keys() == written.keys()
    for name, array in written.items():
        assert tiny.variables[name].dtype == array.dtype
        np.testing.assert_array_equal(tiny.variables[name], array)


def test_bfloat16_is_widened_to_float32():
    values = np.array([1.5, -2.25, 3.0e-3], np.float32)
    top_halves = (values.view(np.uint32) >> 16).astype(np.uint16)
    data = bytearray(write_ct2({"x": top_halves.astype(np.int16)}, {}))
    data[data.index(b"x\0") + 2 + 1 + 4] = 5  # rewrite the dtype code (after rank and dims) to bf16
    x = ct2_whisper.parse_model(bytes(data)).variables["x"]
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, values, rtol=1e-2)


def test_split_parts_are_joined_in_order(tmp_path):
    data = tiny_ct2_bytes()
    (tmp_path / "model.bin.part1").write_bytes(data[: len(data) // 2])
    (tmp_path / "model.bin.part2").write_bytes(data[len(data) // 2:])
    joined = ct2_whisper.read_model(tmp_path)
    assert joined.variables.keys() == ct2_whisper.parse_model(data).variables.keys()
    with pytest.raises(ValueError, match="out of order"):
        ct2_whisper.read_model([tmp_path / "model.bin.part2", tmp_path / "model.bin.part1"])
    with pytest.raises(ValueError, match="truncated"):
        ct2_whisper.read_model([tmp_path / "model.bin.part1"])
    with pytest.raises(ValueError, match="after its last alias"):
        ct2_whisper.parse_model(data + b"\0")


def test_a_missing_part_number_is_an_error(tmp_path):
    for n in (1, 3):
        (tmp_path / f"model.bin.part{n}").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"parts \[1, 3\]"):
        ct2_whisper.read_model(tmp_path)


def test_dequantize_int8_rows_and_int16_global_scale():
    weight = np.array([[0.5, -1.0], [0.02, 0.01]], np.float32)
    row_scale = 127 / np.abs(weight).max(axis=1)
    variables = {"a/weight": np.round(weight * row_scale[:, None]).astype(np.int8),
                 "a/weight_scale": row_scale.astype(np.float32),
                 "b/weight": np.round(weight * 1000).astype(np.int16),
                 "b/weight_scale": np.array(1000, np.float32), "c/bias": weight[0]}
    out = ct2_whisper.dequantize(variables)
    assert set(out) == {"a/weight", "b/weight", "c/bias"}
    assert np.all(np.abs(out["a/weight"] - weight) <= 0.5 / row_scale[:, None] + 1e-7)  # rounding
    np.testing.assert_allclose(out["b/weight"], weight, atol=1e-3)
    with pytest.raises(ValueError, match="weight_scale is missing"):
        ct2_whisper.dequantize({"a/weight": variables["a/weight"]})


# --------------------------------------------------------------------------------- converting
def test_openai_checkpoint_dims_and_dropped_key_bias(tiny):
    checkpoint = ct2_whisper.to_openai_checkpoint(tiny)
    assert checkpoint["dims"] == dict(n_mels=N_MELS, n_audio_ctx=AUDIO_CTX, n_audio_state=D,
                                      n_audio_head=HEADS, n_audio_layer=LAYERS, n_vocab=VOCAB,
                                      n_text_ctx=TEXT_CTX, n_text_state=D, n_text_head=HEADS,
                                      n_text_layer=LAYERS)
    sd = checkpoint["model_state_dict"]
    assert "encoder.blocks.0.attn.key.bias" not in sd and "decoder.blocks.1.cross_attn.key.bias" not in sd
    original = tiny_whisper_variables()["encoder/layer_1/self_attention/linear_0/weight"]
    torch.testing.assert_close(sd["encoder.blocks.1.attn.value.weight"],
                               torch.from_numpy(original[2 * D:].astype(np.float32)))
    assert all(t.dtype == torch.float32 for t in sd.values())


def test_a_nonzero_key_bias_is_refused():
    variables = tiny_whisper_variables()
    variables["decoder/layer_0/attention/linear_1/bias"][0] = 1.0
    with pytest.raises(ValueError, match="key bias is not zero"):
        ct2_whisper.to_openai_checkpoint(ct2_whisper.parse_model(write_ct2(variables, TIED)))


def test_an_untied_projection_is_refused():
    with pytest.raises(ValueError, match="not tied"):
        ct2_whisper.to_openai_checkpoint(ct2_whisper.parse_model(write_ct2(tiny_whisper_variables(), {})))


def test_hf_names():
    assert ct2_whisper.hf_name("encoder.blocks.3.attn.query.weight") == \
        "model.encoder.layers.3.self_attn.q_proj.weight"
    assert ct2_whisper.hf_name("decoder.blocks.0.cross_attn_ln.bias") == \
        "model.decoder.layers.0.encoder_attn_layer_norm.bias"
    assert ct2_whisper.hf_name("encoder.positional_embedding") == "model.encoder.embed_positions.weight"
    assert ct2_whisper.hf_name("encoder.ln_post.weight") == "model.encoder.layer_norm.weight"
    for bad in ("encoder.blocks.0.attn.rotary.weight", "lm_head.weight"):
        with pytest.raises(ValueError, match="not an openai-whisper parameter"):
            ct2_whisper.hf_name(bad)


def test_openai_whisper_and_transformers_load_strictly_and_agree(tiny):
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    from whisper.model import ModelDimensions, Whisper

    checkpoint = ct2_whisper.to_openai_checkpoint(tiny)
    openai_model = Whisper(ModelDimensions(**checkpoint["dims"])).eval()
    openai_model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    hf_sd, config_kwargs = ct2_whisper.openai_to_hf(checkpoint)
    config = WhisperConfig(**config_kwargs)
    hf_model = WhisperForConditionalGeneration(config).eval()
    hf_model.load_state_dict(hf_sd, strict=True)
    encoder = WhisperEncoder(config).eval()
    encoder.load_state_dict(ct2_whisper.hf_encoder_state_dict(hf_sd), strict=True)

    mel = torch.randn(1, N_MELS, 2 * AUDIO_CTX, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[50258, 50259, 50359, 50363]])  # sot, en, transcribe, notimestamps
    with torch.no_grad():
        openai_features = openai_model.encoder(mel)  # (1, AUDIO_CTX, D)
        openai_logits = openai_model.logits(tokens, openai_features)  # (1, 4, VOCAB)
        hf_out = hf_model(input_features=mel, decoder_input_ids=tokens)
        encoder_features = encoder(mel).last_hidden_state
    assert openai_features.shape == (1, AUDIO_CTX, D)
    assert (openai_features - hf_out.encoder_last_hidden_state).abs().max() < 1e-4
    assert (openai_features - encoder_features).abs().max() < 1e-4
    assert (openai_logits - hf_out.logits).abs().max() < 1e-4


def test_hf_config_special_tokens_follow_the_vocabulary():
    dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6,
                n_vocab=51865, n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=6)
    multilingual = ct2_whisper.hf_config_kwargs(dims)
    english = ct2_whisper.hf_config_kwargs({**dims, "n_vocab": 51864})
    assert (multilingual["eos_token_id"], multilingual["decoder_start_token_id"]) == (50257, 50258)
    assert (english["eos_token_id"], english["decoder_start_token_id"]) == (50256, 50257)
    assert multilingual["encoder_ffn_dim"] == 2048


def test_modules_built_under_skip_random_init_draw_no_random_numbers():
    """Random initializations are left out (no random number is drawn for them), the deterministic
    parts of building run as usual, and leaving the mode restores random initialization."""
    from torch import nn

    from blsp_demo.engine.asr import SkipRandomInit

    torch.manual_seed(0)
    state = torch.get_rng_state()
    with SkipRandomInit():
        layers = nn.Sequential(nn.Linear(8, 8), nn.Conv1d(8, 8, 3), nn.Embedding(10, 8), nn.LayerNorm(8))
        mask = torch.empty(3, 3).fill_(-np.inf).triu_(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(layers[3].weight, torch.ones(8)) and torch.equal(layers[3].bias, torch.zeros(8))
    assert torch.equal(mask, torch.tensor([[0.0, -np.inf, -np.inf], [0.0, 0.0, -np.inf], [0.0, 0.0, 0.0]]))
    nn.Linear(8, 8)
    assert not torch.equal(torch.get_rng_state(), state)


def test_lean_whisper_loading_gives_whisper_load_models_model(tiny, tmp_path):
    """`asr.load_whisper` (no random init, weights widened from the mapped file) loads what
    `whisper.load_model` loads: the same fp32 weights and the buffers that are in no checkpoint."""
    import whisper

    from blsp_demo.engine.asr import load_whisper
    from blsp_demo.weights.sources import _save_openai_checkpoint

    path = tmp_path / "openai.pt"
    checkpoint = ct2_whisper.to_openai_checkpoint(tiny)
    checkpoint["model_state_dict"] = {k: v.half().float() for k, v in checkpoint["model_state_dict"].items()}
    _save_openai_checkpoint(checkpoint, path)  # float16 values: stored as float16, as the real one is
    theirs = whisper.load_model(str(path), device="cpu")
    mine = load_whisper(path, torch.device("cpu"))
    a, b = theirs.state_dict(), mine.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].float()) for k in a)
    assert b["encoder.blocks.0.mlp.0.weight"].dtype == torch.float16  # stored so, lossless: kept so
    assert b["decoder.blocks.0.mlp.0.weight"].dtype == b["encoder.ln_post.weight"].dtype == torch.float32
    assert torch.equal(theirs.decoder.mask, mine.decoder.mask)
    assert torch.equal(theirs.alignment_heads.to_dense(), mine.alignment_heads.to_dense())
    mel = torch.randn(1, N_MELS, 2 * AUDIO_CTX, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[50258, 50259, 50359, 50363]])
    with torch.no_grad():
        assert torch.equal(theirs.logits(tokens, theirs.encoder(mel)), mine.logits(tokens, mine.encoder(mel)))
