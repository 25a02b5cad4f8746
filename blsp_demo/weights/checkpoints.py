"""Checkpoint folders -> models: the micro layout (bundled Whisper base + bundled LLM + a trained
adapter), the official BLSP layout, LLaSM folders, and the bundled LLM alone. The family of a
folder comes from its config.json (`detect_family`), never from its name."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from blsp_demo.files import content_sha256
from blsp_demo.weights import hub, sources
from blsp_demo.weights.devices import Placement
from blsp_demo.weights.llms import DEFAULT_LLM, load_bundled_llm, weights_note

if TYPE_CHECKING:
    from blsp_demo.model.blsp import BlspModel


def detect_family(config: dict) -> str:
    if "whisper_config" in config and "llama_config" in config:
        return "blsp"
    if config.get("model_type") == "llaaa":
        return "llasm"
    return "llm"


# ---- components ---------------------------------------------------------------------------
def bundled_llm(dtype: torch.dtype = torch.float32, name: str = DEFAULT_LLM):
    """A bundled LLM (default SmolLM2-135M-Instruct, see `weights.llms`): (model, tokenizer)."""
    return load_bundled_llm(name, dtype)


def template_for_tokenizer(tokenizer) -> str:
    """A plain LLM's template, from what its own chat template contains."""
    chat = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in chat:
        return "chatml"
    if "[INST]" in chat:
        return "llama2-inst"
    return "blsp"


# ---- BLSP folders -------------------------------------------------------------------------
MICRO_ADAPTER_FILE = "adapter.safetensors"


def micro_config(adapter_inner_dim: int = 512, ctc_vocab_size: int = 0, speech_compression: str = "ctc-soft",
                 ctc_sharpness: float = 4.0) -> dict:
    """The micro layout's config.json (without the adapter digest): bundled encoder and LLM."""
    from transformers import WhisperConfig

    whisper = sources.whisper_base()
    llm_dir = sources.gguf_as_transformers(*sources.smollm2_gguf())
    llm_cfg = json.loads((llm_dir / "config.json").read_text())
    return {
        "whisper_config": WhisperConfig.from_pretrained(whisper.hf_dir).to_dict(), "llama_config": llm_cfg,
        "conv_kernel_sizes": "5,5,5", "adapter_inner_dim": adapter_inner_dim, "prompt_template": "chatml",
        "encoder_window": "trimmed", "speech_compression": speech_compression,
        "ctc_vocab_size": ctc_vocab_size, "ctc_sharpness": ctc_sharpness,
        "components": {"whisper": "bundled:whisper-base", "llm": "bundled:smollm2-135m-instruct",
                       "adapter": {"file": MICRO_ADAPTER_FILE, "sha256": None}},
    }


def assemble_micro(cfg: dict, place: Placement, adapter_state: dict | None = None):
    """Bundled Whisper base encoder + bundled SmolLM2 + an adapter (fresh when `adapter_state` is None)."""
    from transformers import WhisperFeatureExtractor

    from blsp_demo.model.blsp import BlspConfig, BlspModel  # here, not at the top: see model/tokens.py
    from blsp_demo.model.whisper_reader import offsets_tokenizer

    whisper, _ = hub.whisper_base()  # the pip packages, else the Hub (weights/hub.py)
    llm, tokenizer = bundled_llm(place.dtype)
    config = BlspConfig(**{k: v for k, v in cfg.items() if k != "components"})
    # Built for real, not on the meta device: non-persistent buffers (rotary frequencies) are
    # computed in __init__ and are in no file.
    model = BlspModel(config)
    state = {f"llama_model.{k}": v for k, v in llm.state_dict().items()}
    state.update({f"whisper_model.{k}": v for k, v in whisper_encoder_state(whisper.hf_dir).items()})
    if config.speech_compression.startswith("whisper-decoder"):  # the frozen decoder reads the speech too
        state.update({f"whisper_decoder.{k}": v for k, v in whisper_state(whisper.hf_dir, "model.decoder.").items()})
    if adapter_state is not None:
        state.update(adapter_state)
    model.load_state_dict(state, strict=adapter_state is not None)
    model.llama_model.tie_weights()
    if config.speech_compression == "whisper-decoder-soft":
        model.token_map = whisper_token_map(tokenizer, model.llama_model.get_input_embeddings().weight.detach())
        if config.reader_positions == "llm":
            model.llm_tokenize = offsets_tokenizer(tokenizer)
    extractor = WhisperFeatureExtractor.from_pretrained(whisper.hf_dir)
    return model.to(place.device, place.dtype), tokenizer, extractor


def whisper_token_map(llm_tokenizer, table: torch.Tensor, n_text: int = 50257) -> torch.Tensor:
    """(n_text, d_llm): for each Whisper text token, the mean LLM input embedding of its text's LLM
    tokens (zero for a byte that is only part of a character). Derived, never stored."""
    import whisper

    enc = whisper.tokenizer.get_tokenizer(True).encoding
    out = torch.zeros(n_text, table.shape[1])
    for i in range(n_text):
        text = enc.decode_single_token_bytes(i).decode("utf-8", errors="ignore")
        ids = llm_tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if ids:
            out[i] = table[ids].float().mean(0)
    return out


def load_micro_blsp(folder: Path, place: Placement) -> tuple[BlspModel, object, object, str]:
    """The micro layout: config.json names bundled components; adapter.safetensors holds the rest.
    Every part is sha256-checked (the bundled ones by `sources`, the adapter here)."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None
    if cfg is not None and cfg["components"]["adapter"].get("untrained"):
        return load_untrained_reader(folder, cfg, place)
    adapter_file = folder / (cfg["components"]["adapter"]["file"] if cfg else MICRO_ADAPTER_FILE)
    if cfg is None or not adapter_file.is_file():
        raise sources.WeightsError(f"{folder.name}: the trained adapter ({adapter_file.name}) is not there yet; "
                                   f"train it (python -m blsp_demo.train.micro run) or use micro-cascade.")
    digest = content_sha256(adapter_file)
    if digest != cfg["components"]["adapter"]["sha256"]:
        raise sources.WeightsError(f"{adapter_file} is damaged: sha256 {digest[:12]}... does not match config.json")
    model, tokenizer, extractor = assemble_micro(cfg, place, load_file(str(adapter_file)))
    return model, tokenizer, extractor, f"{folder.name}@{digest[:12]}{weights_note(DEFAULT_LLM, whisper=True)}"


def load_untrained_reader(folder: Path, cfg: dict, place: Placement) -> tuple[BlspModel, object, object, str]:
    """A micro folder whose config says `"adapter": {"untrained": true}`: a whisper-decoder-soft model with
    no trained parameters at all (its decoder adapter is zero), so the speech embeddings are Whisper's own
    soft reading in the LLM's embedding space; the folder holds only config.json."""
    if cfg.get("speech_compression") != "whisper-decoder-soft":
        raise sources.WeightsError(f"{folder.name}: an untrained adapter only makes sense for "
                                   f"speech_compression 'whisper-decoder-soft', not {cfg.get('speech_compression')!r}")
    model, tokenizer, extractor = assemble_micro(cfg, place, None)
    with torch.no_grad():
        for p in model.decoder_adapter.parameters():
            p.zero_()
    return model, tokenizer, extractor, f"{folder.name}@untrained{weights_note(DEFAULT_LLM, whisper=True)}"


def whisper_encoder_state(hf_dir: Path) -> dict:
    return whisper_state(hf_dir, "model.encoder.")


def whisper_state(hf_dir: Path, prefix: str) -> dict:
    """The entries of the bundled Whisper under `prefix` (the encoder's or the decoder's), fp32."""
    from safetensors.torch import load_file

    return {k[len(prefix):]: v.float() for k, v in load_file(str(hf_dir / "model.safetensors")).items()
            if k.startswith(prefix)}


def load_official_blsp(folder: Path, place: Placement):
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from blsp_demo.model.blsp import BlspModel

    model = BlspModel.from_pretrained(folder, dtype=place.dtype).to(place.device)
    return model, AutoTokenizer.from_pretrained(folder), WhisperFeatureExtractor.from_pretrained(folder)


def load_blsp_folder(folder: Path, place: Placement):
    cfg = json.loads((folder / "config.json").read_text())
    if "components" in cfg:
        return load_micro_blsp(folder, place)
    model, tok, fx = load_official_blsp(folder, place)
    return model, tok, fx, folder.name


# ---- LLaSM folders ------------------------------------------------------------------------
LLASM_AUDIO_TOWER_ENV = "LLASM_AUDIO_TOWER"


def llasm_audio_tower_folder(config: dict, audio_tower: str | None = None) -> Path:
    """Where the Whisper tower is: `audio_tower` (a folder or Hub id), else $LLASM_AUDIO_TOWER, else
    the checkpoint's own `mm_audio_tower` when that is a folder here (the releases name the path
    on their training machines)."""
    spec = audio_tower or os.environ.get(LLASM_AUDIO_TOWER_ENV)
    if spec:
        return sources.resolve_checkpoint(spec)
    named = config.get("mm_audio_tower")
    if named and Path(named).expanduser().is_dir():
        return Path(named).expanduser()
    raise sources.WeightsError(
        f"This LLaSM checkpoint's audio tower (mm_audio_tower={named!r}) is not a folder here. Pass the "
        f"Whisper model it was trained with (openai/whisper-large-v2 for the released LLaSM models): "
        f"load_engine(..., audio_tower=FOLDER_OR_HUB_ID), or set {LLASM_AUDIO_TOWER_ENV}=FOLDER_OR_HUB_ID.")


def llasm_template(folder: Path, config: dict) -> str:
    """LLaSM-Baichuan's tokenizer is Baichuan's; LLaSM-Cllama2 (and any other) uses Llama-2 [INST]."""
    if config.get("prompt_template"):
        return config["prompt_template"]
    tok_cfg = folder / "tokenizer_config.json"
    tok_class = json.loads(tok_cfg.read_text()).get("tokenizer_class", "") if tok_cfg.is_file() else ""
    return "baichuan" if "Baichuan" in (tok_class or "") else "llasm-llama2"


def llasm_tokenizer(folder: Path, template: str):
    """The checkpoint's tokenizer with LLaSM's three audio tokens (added as the official code does;
    nothing changes when the folder already holds them). Baichuan's own tokenizer class is remote
    code: its sentencepiece model is read as a Llama tokenizer instead."""
    from transformers import AutoTokenizer, LlamaTokenizer

    from blsp_demo.model.tokens import AUDIO_TOKENS

    tok = (LlamaTokenizer if template == "baichuan" else AutoTokenizer).from_pretrained(folder)
    tok.add_tokens([AUDIO_TOKENS[0]], special_tokens=True)
    tok.add_tokens(list(AUDIO_TOKENS[1:]), special_tokens=True)
    return tok


def load_llasm(folder: Path, place: Placement, audio_tower: str | None = None, template: str | None = None):
    """A LLaSM folder -> (LlasmForCausalLM, tokenizer, AudioTower, template name, revision)."""
    from blsp_demo.model.llasm import AudioTower, LlasmForCausalLM
    from blsp_demo.model.tokens import AUDIO_TOKENS

    config = json.loads((folder / "config.json").read_text())
    tower_dir = llasm_audio_tower_folder(config, audio_tower)
    template = template or llasm_template(folder, config)
    model, info = LlasmForCausalLM.from_pretrained(folder, dtype=place.dtype, output_loading_info=True)
    bad = {k: sorted(v)[:5] for k, v in info.items() if k != "error_msgs" and v}
    if bad:
        raise sources.WeightsError(f"{folder} does not hold a LLaSM (Llama-layout) checkpoint: {bad}")
    tok = llasm_tokenizer(folder, template)
    top = max(tok.convert_tokens_to_ids(list(AUDIO_TOKENS)))
    if top >= model.config.vocab_size:
        raise sources.WeightsError(f"{folder}: the tokenizer's audio tokens reach id {top}, beyond the model's "
                                   f"{model.config.vocab_size} embeddings; is this the matching tokenizer?")
    tower = AudioTower.from_pretrained(tower_dir, model.config.audio_token_len, place.dtype, place.device)
    if tower.width != model.config.mm_hidden_size:
        raise sources.WeightsError(f"the audio tower {tower_dir} is {tower.width} wide; this LLaSM checkpoint's "
                                   f"projector takes {model.config.mm_hidden_size} (mm_hidden_size)")
    return model.to(place.device), tok, tower, template, f"{folder.name}+{tower_dir.name}"
