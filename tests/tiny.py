"""Tiny random models for fast tests: a sentencepiece tokenizer trained here, tiny Whisper and
Llama configs, and a checkpoint written in the official BLSP layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = """the quick brown fox jumps over the lazy dog
what is the capital of france? paris is the capital of france.
please repeat the following words. continue the following text.
hello world how are you today i am fine thank you
speech and text turns in one conversation with a small model
one two three four five six seven eight nine ten
""".splitlines()

SPECIALS = ["<|im_start|>", "<|im_end|>", "###[Human]:", "###[Assistant]:"]


def train_tokenizer(out_dir: Path, vocab_size: int = 360) -> Path:
    """A LlamaTokenizer over a sentencepiece model trained on a few lines (byte fallback: any text)."""
    import sentencepiece as spm
    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "corpus.txt"
    text.write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
        pad_id=-1, user_defined_symbols=SPECIALS, minloglevel=2, hard_vocab_limit=False,
    )
    (out_dir / "tokenizer.vocab").unlink()
    (out_dir / "tokenizer_config.json").write_text(json.dumps({  # as Llama-2 folders have it
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    text.unlink()
    return out_dir


def whisper_config(d_model: int = 32) -> dict:
    return dict(d_model=d_model, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                max_source_positions=1500, vocab_size=100)


def llama_config(vocab_size: int, hidden: int = 64) -> dict:
    return dict(model_type="llama", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                rms_norm_eps=1e-6)


def write_official_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random BLSP checkpoint exactly as the official release lays it out:
    config.json (no project-specific fields), pytorch_model.bin, sentencepiece tokenizer,
    preprocessor_config.json."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from blsp_demo.model.adapter import Adapter, Conv1dSubsampler

    tok_dir = train_tokenizer(out_dir)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    torch.manual_seed(seed)
    wcfg, lcfg = WhisperConfig(**whisper_config()), LlamaConfig(**llama_config(vocab))
    parts = {
        "whisper_model": WhisperEncoder(wcfg),
        "llama_model": LlamaForCausalLM(lcfg),
        "subsampler": Conv1dSubsampler(32, 64, 64, [5, 5, 5]),
        "adapter": Adapter(64, 16),
        "speech_ln": torch.nn.LayerNorm(64),
    }
    with torch.no_grad():  # a non-trivial LayerNorm so that a mix-up would show
        parts["speech_ln"].weight.uniform_(0.5, 1.5)
        parts["speech_ln"].bias.uniform_(-0.1, 0.1)
    state = {f"{name}.{k}": v for name, m in parts.items() for k, v in m.state_dict().items()}
    torch.save(state, out_dir / "pytorch_model.bin")
    config = {
        "architectures": ["BlspModel"], "whisper_config": wcfg.to_dict(), "llama_config": lcfg.to_dict(),
        "conv_kernel_sizes": "5,5,5", "adapter_inner_dim": 16, "torch_dtype": "float32",
        "transformers_version": "4.31.0",
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out_dir)
    return out_dir
