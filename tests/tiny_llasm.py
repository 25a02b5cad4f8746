"""Tiny random LLaSM checkpoints laid out as the releases are (LinkSoul/LLaSM-Cllama2): config.json
with `model_type: llaaa` and the LLaSM fields, Llama weights plus `model.mm_projector.*` in
pytorch_model.bin, a sentencepiece Llama tokenizer with the three audio tokens added, and a
separate tiny Whisper folder as the audio tower. Written with plain transformers/torch classes,
not the project's, so that loading them tests compatibility."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tiny import llama_config, train_tokenizer, whisper_config

AUDIO_TOKENS = ["<au_patch>", "<au_start>", "<au_end>"]  # the official order
TOWER_WIDTH = 32


def write_whisper_tower(out_dir: Path, seed: int = 1) -> Path:
    """A tiny whole Whisper model (encoder and decoder) with its feature extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(seed)
    cfg = WhisperConfig(**whisper_config(TOWER_WIDTH), decoder_start_token_id=3, bos_token_id=3, eos_token_id=4,
                        pad_token_id=4, max_target_positions=64)
    WhisperModel(cfg).save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out_dir)
    return out_dir


def write_llasm_checkpoint(out_dir: Path, tower_dir: Path | str, seed: int = 0, baichuan: bool = False) -> Path:
    """A LLaSM checkpoint whose config names `tower_dir` as its mm_audio_tower."""
    from transformers import LlamaConfig, LlamaForCausalLM

    train_tokenizer(out_dir)
    base_vocab = 360  # tiny.train_tokenizer's vocabulary
    (out_dir / "added_tokens.json").write_text(json.dumps({t: base_vocab + i for i, t in enumerate(AUDIO_TOKENS)}))
    (out_dir / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                 "unk_token": "<unk>"}))
    if baichuan:  # Baichuan's own (remote-code) tokenizer class, as LLaSM-Baichuan ships it
        cfg = json.loads((out_dir / "tokenizer_config.json").read_text())
        cfg.update(tokenizer_class="BaichuanTokenizer",
                   auto_map={"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]})
        (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    lcfg = LlamaConfig(**{**llama_config(base_vocab + len(AUDIO_TOKENS)), "max_position_embeddings": 1024})
    state = LlamaForCausalLM(lcfg).state_dict()
    projector = torch.nn.Linear(TOWER_WIDTH, lcfg.hidden_size)
    state.update({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()})
    torch.save(state, out_dir / "pytorch_model.bin")
    config = {**lcfg.to_dict(), "architectures": ["LlaaaLlamaForCausalLM"], "model_type": "llaaa",
              "mm_audio_tower": str(tower_dir), "use_mm_proj": True, "mm_hidden_size": TOWER_WIDTH,
              "audio_token_len": 64, "torch_dtype": "float32", "transformers_version": "4.31.0"}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def copy_with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of a checkpoint folder with some config.json fields changed."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst
