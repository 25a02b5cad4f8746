"""CTranslate2 Whisper (faster-whisper's model.bin) -> openai-whisper and transformers weights.

The file is read with numpy alone; the ctranslate2 package is not needed.

model.bin, binary version 6, little endian:
    u32 version; str name; u32 revision; u32 n_vars
    n_vars x (str name; u8 rank; rank x u32 dims; u8 dtype; u32 nbytes; nbytes of raw data)
    u32 n_aliases; n_aliases x (str alias; str target)
    str = u16 length (the final NUL included), the UTF-8 bytes, NUL
A large model may ship split as model.bin.part1, model.bin.part2, ...: their bytes joined in order.

Names: CTranslate2 fuses the self-attention q,k,v into one `linear_0` ([3d, d], q first) and the
cross-attention k,v into `linear_1` ([2d, d], k first); it stores a key bias that is exactly zero
(Whisper has none), and the output projection is an alias of the token embeddings (tied).
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

BINARY_VERSION = 6
BFLOAT16 = 5  # dtype code; numpy has no bfloat16, read as uint16 and widened
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
          4: np.dtype("<f2"), BFLOAT16: np.dtype("<u2")}
SPLIT_HINT = ("a model.bin.partN file missing, or the parts joined out of order? "
              "join model.bin.part1, model.bin.part2, ... in that order")


@dataclass
class Ct2Model:
    """A parsed model.bin: arrays by CTranslate2 name (views of the bytes read; bfloat16 widened)."""

    variables: dict[str, np.ndarray]
    aliases: dict[str, str]  # alias name -> target variable name
    meta: dict  # {"version": int, "name": str, "revision": int}


# ------------------------------------------------------------------------------------ reading
class _Cursor:
    """Reads the file front to back; a short read is a ValueError, never a struct.error."""

    def __init__(self, data: bytes | bytearray | memoryview):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            left = len(self.data) - self.pos
            raise ValueError(f"model.bin is truncated: {what} needs {n} bytes at offset {self.pos} "
                             f"but {left} are left ({SPLIT_HINT})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.uint("H", what), what))
        if not raw or raw[-1] != 0:
            raise ValueError(f"model.bin is corrupt: {what} at offset {self.pos} is not "
                             f"NUL-terminated ({SPLIT_HINT})")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"model.bin is corrupt: {what} is not UTF-8 ({SPLIT_HINT})") from None


def _read_variable(cur: _Cursor) -> tuple[str, np.ndarray]:
    name = cur.string("a variable name")
    shape = tuple(cur.uint("I", f"{name!r} shape") for _ in range(cur.uint("B", f"{name!r} rank")))
    code = cur.uint("B", f"{name!r} dtype")
    if code not in DTYPES:
        raise ValueError(f"model.bin is corrupt: variable {name!r} has unknown dtype code {code}")
    nbytes = cur.uint("I", f"{name!r} size")
    if nbytes != math.prod(shape) * DTYPES[code].itemsize:
        raise ValueError(f"model.bin is corrupt: variable {name!r} of shape {shape} "
                         f"declares {nbytes} bytes ({SPLIT_HINT})")
    array = np.frombuffer(cur.take(nbytes, f"variable {name!r}"), dtype=DTYPES[code]).reshape(shape)
    if code == BFLOAT16:  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return name, array


def parse_model(data: bytes | bytearray | memoryview) -> Ct2Model:
    """Parses the bytes of a whole model.bin (all parts joined)."""
    cur = _Cursor(data)
    version = cur.uint("I", "the binary version")
    if version != BINARY_VERSION:
        raise ValueError(f"not a CTranslate2 model.bin of binary version {BINARY_VERSION} "
                         f"(read {version}); {SPLIT_HINT}")
    meta = {"version": version, "name": cur.string("the model name"),
            "revision": cur.uint("I", "the revision")}
    n_vars = cur.uint("I", "the variable count")
    variables = dict(_read_variable(cur) for _ in range(n_vars))
    n_aliases = cur.uint("I", "the alias count")
    aliases = {cur.string("an alias"): cur.string("an alias target") for _ in range(n_aliases)}
    if cur.pos != len(cur.data):
        raise ValueError(f"model.bin has {len(cur.data) - cur.pos} bytes after its last alias "
                         f"({SPLIT_HINT})")
    return Ct2Model(variables, aliases, meta)


def model_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files that make up a model: a model.bin, a folder holding model.bin or its parts
    (numbered 1..n, none missing), or an explicit list of parts in order."""
    if not isinstance(source, (str, Path)):
        return [Path(p) for p in source]
    path = Path(source)
    if not path.is_dir():
        return [path]
    if (path / "model.bin").is_file():
        return [path / "model.bin"]
    numbers = sorted(int(m.group(1)) for p in path.glob("model.bin.part*")
                     if (m := re.fullmatch(r"model\.bin\.part(\d+)", p.name)))
    if not numbers:
        raise FileNotFoundError(f"no model.bin or model.bin.partN in {path}")
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"{path} has model.bin parts {numbers}: expected 1..{len(numbers)} "
                         f"with none missing")
    return [path / f"model.bin.part{n}" for n in numbers]


def read_model(source: str | Path | Sequence[str | Path]) -> Ct2Model:
    """Reads a model (see `model_files`); split parts are joined in the order given."""
    return parse_model(b"".join(p.read_bytes() for p in model_files(source)))


# ----------------------------------------------------------------------- resolving variables
def dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8 / int16 weights come with `<name>_scale` (one per output row, or one for all):
    the float weight is q / scale. Other arrays pass through; the scales are dropped."""
    out = {}
    for name, array in variables.items():
        if name.endswith("/weight_scale"):
            continue
        if name.endswith("/weight") and array.dtype in (np.int8, np.int16):
            scale = variables.get(name + "_scale")
            if scale is None:
                raise ValueError(f"{name} is quantized ({array.dtype}) but {name}_scale is missing")
            scale = scale.astype(np.float32).reshape(-1, *([1] * (array.ndim - 1)))
            array = array.astype(np.float32) / scale
        out[name] = array
    return out


def resolved_variables(model: Ct2Model) -> dict[str, np.ndarray]:
    """Dequantized variables, with every alias present under its own name too."""
    variables = dequantize(model.variables)
    for alias, target in model.aliases.items():
        variables.setdefault(alias, variables[target])
    return variables


def _layer_count(variables: dict[str, np.ndarray], part: str) -> int:
    layers = {int(m.group(1)) for k in variables if (m := re.match(rf"{part}/layer_(\d+)/", k))}
    if layers != set(range(len(layers))):
        raise ValueError(f"{part} layers {sorted(layers)} are not numbered 0..n-1")
    return len(layers)


def _num_heads(variables: dict[str, np.ndarray], part: str, width: int) -> int:
    stored = variables.get(f"{part}/num_heads")
    return int(stored.reshape(-1)[0]) if stored is not None else width // 64  # Whisper: 64 per head


def whisper_dims(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """openai-whisper's ModelDimensions, from the shapes and the stored head counts."""
    conv1 = variables["encoder/conv1/weight"]  # (d_audio, n_mels, 3)
    embeddings = variables["decoder/embeddings/weight"]  # (n_vocab, d_text)
    return dict(
        n_mels=int(conv1.shape[1]),
        n_audio_ctx=int(variables["encoder/position_encodings/encodings"].shape[0]),
        n_audio_state=int(conv1.shape[0]),
        n_audio_head=_num_heads(variables, "encoder", conv1.shape[0]),
        n_audio_layer=_layer_count(variables, "encoder"),
        n_vocab=int(embeddings.shape[0]),
        n_text_ctx=int(variables["decoder/position_encodings/encodings"].shape[0]),
        n_text_state=int(embeddings.shape[1]),
        n_text_head=_num_heads(variables, "decoder", embeddings.shape[1]),
        n_text_layer=_layer_count(variables, "decoder"),
    )


# ----------------------------------------------------------------------- -> openai-whisper
def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a writable float32 copy


def _check_zero_key_bias(bias: np.ndarray, name: str) -> None:
    if np.any(bias != 0):  # Whisper's key projection has no bias: a non-zero one would be lost
        raise ValueError(f"{name}: the key bias is not zero (max |b| = {np.abs(bias).max()})")


def _linear(v: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": _tensor(v[f"{src}/weight"]), f"{dst}.bias": _tensor(v[f"{src}/bias"])}


def _norm(v: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": _tensor(v[f"{src}/gamma"]), f"{dst}.bias": _tensor(v[f"{src}/beta"])}


def _self_attention(v: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    """Fused q,k,v `linear_0` ([3d, d]) -> query/key/value, `linear_1` -> out."""
    q, k, val = np.split(v[f"{src}/linear_0/weight"], 3)
    bq, bk, bv = np.split(v[f"{src}/linear_0/bias"], 3)
    _check_zero_key_bias(bk, f"{src}/linear_0")
    return {f"{dst}.query.weight": _tensor(q), f"{dst}.query.bias": _tensor(bq),
            f"{dst}.key.weight": _tensor(k),
            f"{dst}.value.weight": _tensor(val), f"{dst}.value.bias": _tensor(bv),
            **_linear(v, f"{src}/linear_1", f"{dst}.out")}


def _cross_attention(v: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    """`linear_0` -> query, fused k,v `linear_1` ([2d, d]) -> key/value, `linear_2` -> out."""
    k, val = np.split(v[f"{src}/linear_1/weight"], 2)
    bk, bv = np.split(v[f"{src}/linear_1/bias"], 2)
    _check_zero_key_bias(bk, f"{src}/linear_1")
    return {**_linear(v, f"{src}/linear_0", f"{dst}.query"),
            f"{dst}.key.weight": _tensor(k),
            f"{dst}.value.weight": _tensor(val), f"{dst}.value.bias": _tensor(bv),
            **_linear(v, f"{src}/linear_2", f"{dst}.out")}


def _block(v: dict, src: str, dst: str, cross: bool) -> dict[str, torch.Tensor]:
    sd = {**_self_attention(v, f"{src}/self_attention", f"{dst}.attn"),
          **_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln"),
          **_linear(v, f"{src}/ffn/linear_0", f"{dst}.mlp.0"),
          **_linear(v, f"{src}/ffn/linear_1", f"{dst}.mlp.2"),
          **_norm(v, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")}
    if cross:
        sd |= _cross_attention(v, f"{src}/attention", f"{dst}.cross_attn")
        sd |= _norm(v, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
    return sd


def _check_tied_projection(model: Ct2Model, v: dict) -> None:
    """openai-whisper and transformers both reuse the token embeddings as the output layer."""
    name, embeddings = "decoder/projection/weight", "decoder/embeddings/weight"
    tied = (model.aliases.get(name) == embeddings
            or (name in v and np.array_equal(v[name], v[embeddings])))
    if not tied:
        raise ValueError(f"{name} is not tied to {embeddings}: not a Whisper model")
    bias = v.get("decoder/projection/bias")
    if bias is not None and np.any(bias != 0):
        raise ValueError("decoder/projection/bias is not zero: not a Whisper model")


# flags CTranslate2 stores with a decoder, and the values Whisper's architecture has
WHISPER_FLAGS = {"decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0,
                 "decoder/activation": 3}  # 3: exact (erf) GELU in CTranslate2's ActivationType


def _check_whisper_flags(v: dict) -> None:
    for name, whisper_value in WHISPER_FLAGS.items():
        if name in v and int(v[name].reshape(-1)[0]) != whisper_value:
            raise ValueError(f"{name} is {int(v[name].reshape(-1)[0])}, Whisper has "
                             f"{whisper_value}: not a Whisper model")


def to_openai_checkpoint(model: Ct2Model, dtype: torch.dtype = torch.float32) -> dict:
    """{"dims": ModelDimensions kwargs, "model_state_dict": ...}: what whisper.load_model reads."""
    v = resolved_variables(model)
    dims = whisper_dims(v)
    _check_whisper_flags(v)
    _check_tied_projection(model, v)
    sd = {**_linear(v, "encoder/conv1", "encoder.conv1"),
          **_linear(v, "encoder/conv2", "encoder.conv2"),
          "encoder.positional_embedding": _tensor(v["encoder/position_encodings/encodings"])}
    for i in range(dims["n_audio_layer"]):
        sd |= _block(v, f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    sd |= _norm(v, "encoder/layer_norm", "encoder.ln_post")
    sd["decoder.token_embedding.weight"] = _tensor(v["decoder/embeddings/weight"])
    sd["decoder.positional_embedding"] = _tensor(v["decoder/position_encodings/encodings"])
    for i in range(dims["n_text_layer"]):
        sd |= _block(v, f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    sd |= _norm(v, "decoder/layer_norm", "decoder.ln")
    return {"dims": dims, "model_state_dict": {k: t.to(dtype) for k, t in sd.items()}}


# ------------------------------------------------------------------------- -> transformers
# openai-whisper module names -> transformers WhisperForConditionalGeneration ones
_HF_TOP_LEVEL = {
    "encoder.conv1": "model.encoder.conv1",
    "encoder.conv2": "model.encoder.conv2",
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",
    "encoder.ln_post": "model.encoder.layer_norm",
    "decoder.token_embedding": "model.decoder.embed_tokens",
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",
    "decoder.ln": "model.decoder.layer_norm",
}
_HF_IN_BLOCK = {
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj", "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
}


def rename_parameter(name: str, block: str, block_format: str, in_block: dict, top_level: dict) -> str | None:
    """One parameter name in the other layout: `block` matches a name inside a layer (groups: part,
    index, module, weight|bias), `block_format` writes it back; `top_level` maps whole names or the
    module part of one. None: not a name of this layout."""
    if m := re.fullmatch(block, name):
        part, index, module, param = m.groups()
        return block_format.format(part=part, index=index, module=in_block[module], param=param) \
            if module in in_block else None
    if name in top_level:
        return top_level[name]
    module, _, param = name.rpartition(".")
    return f"{top_level[module]}.{param}" if module in top_level else None


def hf_name(openai_name: str) -> str:
    """`encoder.blocks.3.attn.query.weight` -> `model.encoder.layers.3.self_attn.q_proj.weight`."""
    out = rename_parameter(openai_name, r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)",
                           "model.{part}.layers.{index}.{module}.{param}", _HF_IN_BLOCK, _HF_TOP_LEVEL)
    if out is None:
        raise ValueError(f"not an openai-whisper parameter name: {openai_name!r}")
    return out


def hf_config_kwargs(dims: dict[str, int]) -> dict:
    """transformers WhisperConfig kwargs for openai-whisper ModelDimensions."""
    if dims["n_audio_state"] != dims["n_text_state"]:
        raise ValueError("transformers' Whisper needs one width for the encoder and the decoder")
    d_model = dims["n_audio_state"]
    return dict(_special_token_ids(dims["n_vocab"]),
        vocab_size=dims["n_vocab"], num_mel_bins=dims["n_mels"], d_model=d_model,
        encoder_layers=dims["n_audio_layer"], encoder_attention_heads=dims["n_audio_head"],
        decoder_layers=dims["n_text_layer"], decoder_attention_heads=dims["n_text_head"],
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        max_source_positions=dims["n_audio_ctx"], max_target_positions=dims["n_text_ctx"],
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
    )


def _special_token_ids(n_vocab: int) -> dict:
    """Whisper's tokenizer ids, as transformers' Whisper configs spell them."""
    end_of_text = 50257 if n_vocab >= 51865 else 50256  # English-only has one token fewer
    return dict(bos_token_id=50257, eos_token_id=end_of_text, pad_token_id=end_of_text,
                decoder_start_token_id=end_of_text + 1)  # <|startoftranscript|>


def openai_to_hf(checkpoint: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An openai-whisper checkpoint -> (WhisperForConditionalGeneration state dict, WhisperConfig
    kwargs). `proj_out.weight` is the token embedding tensor itself (tied)."""
    hf_sd = {hf_name(k): t for k, t in checkpoint["model_state_dict"].items()}
    hf_sd["proj_out.weight"] = hf_sd["model.decoder.embed_tokens.weight"]
    return hf_sd, hf_config_kwargs(checkpoint["dims"])


def to_hf(model: Ct2Model, dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict]:
    """A CTranslate2 Whisper -> (WhisperForConditionalGeneration state dict, WhisperConfig kwargs)."""
    return openai_to_hf(to_openai_checkpoint(model, dtype))


def hf_encoder_state_dict(hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `WhisperEncoder` part (`conv1.weight`, `embed_positions.weight`, `layers.N...`)."""
    prefix = "model.encoder."
    return {k[len(prefix):]: t for k, t in hf_state_dict.items() if k.startswith(prefix)}
