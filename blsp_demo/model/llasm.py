"""LLaSM: a whole frozen Whisper (encoder and decoder) -> one linear projector -> Llama.

Compatible with the released checkpoints (`LinkSoul/LLaSM-Cllama2`, `LinkSoul/LLaSM-Baichuan`;
both are stored as Llama models): `LlaaaConfig` keeps their `model_type = "llaaa"` and their
fields, and `LlasmForCausalLM`'s state dict is Llama's plus `model.mm_projector.{weight,bias}`.
The audio tower is not in the checkpoint: `AudioTower` loads a Whisper folder of its own
(`openai/whisper-large-v2` for the releases).

How audio reaches the LLM: each 30 s window of audio (features padded to 30 s) runs through the
Whisper encoder, and the Whisper decoder reads `audio_token_len` (64) copies of its start token;
the decoder's last hidden states (64, d_whisper) go through `mm_projector` and replace the
embeddings of the 64 `<au_patch>` tokens between `<au_start>` and `<au_end>`. In this project
those 64 positions hold `SPEECH_PLACEHOLDER` ids, filled with `masked_scatter` as for BLSP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, LlamaConfig, LlamaModel, WhisperFeatureExtractor, WhisperModel
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaPreTrainedModel

from blsp_demo.model.blsp import embed_with_placeholders
from blsp_demo.model.encoder import log_mel
from blsp_demo.model.tokens import AUDIO_TOKEN_LEN

WHISPER_LARGE_V2_WIDTH = 1280  # mm_hidden_size of the releases


@strict
class LlaaaConfig(LlamaConfig):
    model_type = "llaaa"

    mm_audio_tower: str | None = None  # the Whisper folder or Hub id the model was trained with
    use_mm_proj: bool = True
    mm_hidden_size: int = WHISPER_LARGE_V2_WIDTH  # Whisper's d_model
    audio_token_len: int = AUDIO_TOKEN_LEN


AutoConfig.register("llaaa", LlaaaConfig, exist_ok=True)  # AutoTokenizer reads config.json too


class LlasmModel(LlamaModel):
    """Llama's decoder stack plus the projector (so its key is `model.mm_projector.*`)."""

    config_class = LlaaaConfig
    config: LlaaaConfig

    def __init__(self, config: LlaaaConfig):
        super().__init__(config)
        self.mm_projector = nn.Linear(config.mm_hidden_size, config.hidden_size)
        self.post_init()


class LlasmForCausalLM(LlamaForCausalLM):
    config_class = LlaaaConfig
    config: LlaaaConfig

    def __init__(self, config: LlaaaConfig):
        LlamaPreTrainedModel.__init__(self, config)  # not LlamaForCausalLM's: it builds a LlamaModel
        self.model = LlasmModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def project_audio(self, audio_states: torch.Tensor) -> torch.Tensor:
        """Whisper decoder states (..., 64, mm_hidden) -> LLM embeddings (..., 64, d_llm)."""
        proj = self.model.mm_projector
        return proj(audio_states.to(proj.weight.dtype))

    def embed_with_speech(self, input_ids: torch.Tensor, speech_frames: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with placeholder positions filled by `speech_frames` (N, d_llm) in order."""
        return embed_with_placeholders(self.get_input_embeddings(), input_ids, speech_frames)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                audio_states: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs):
        """`input_ids` may hold SPEECH_PLACEHOLDER positions (64 per window), filled in order from
        `audio_states` (N windows, 64, mm_hidden). Returns the LM output, with `.loss` over the
        positions where `labels != -100` when labels are given."""
        if input_ids is not None and (audio_states is not None or bool((input_ids == SPEECH_PLACEHOLDER).any())):
            frames = None if audio_states is None else self.project_audio(audio_states).flatten(0, 1)  # (N*64, d_llm)
            inputs_embeds, input_ids = self.embed_with_speech(input_ids, frames), None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                               labels=labels, **kwargs)


class AudioTower:
    """LLaSM's audio tower: a whole Whisper model, frozen, loaded from its own folder.

    Not an `nn.Module` of the LLM on purpose: it is not in the LLaSM checkpoint, so it stays out
    of the LLM's state dict (no unexpected or missing keys either way)."""

    def __init__(self, whisper: WhisperModel, extractor: WhisperFeatureExtractor,
                 audio_token_len: int = AUDIO_TOKEN_LEN):
        self.whisper = whisper.eval().requires_grad_(False)
        self.extractor = extractor
        self.audio_token_len = audio_token_len

    @classmethod
    def from_pretrained(cls, folder: str | Path, audio_token_len: int = AUDIO_TOKEN_LEN,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "AudioTower":
        whisper = WhisperModel.from_pretrained(folder, dtype=dtype).to(device)
        return cls(whisper, WhisperFeatureExtractor.from_pretrained(folder), audio_token_len)

    @property
    def width(self) -> int:
        return self.whisper.config.d_model

    def features(self, windows: list[np.ndarray]) -> torch.Tensor:
        """16 kHz windows (each <= 30 s) -> log-mel features padded to 30 s: (N, n_mels, 3000)."""
        return torch.cat([log_mel(self.extractor, w, "full")[0] for w in windows])

    @torch.inference_mode()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Features (N, n_mels, 3000) -> decoder states (N, 64, d_whisper)."""
        p = next(self.whisper.parameters())
        start = torch.full((features.shape[0], self.audio_token_len), self.whisper.config.decoder_start_token_id,
                           dtype=torch.long, device=p.device)
        return self.whisper(features.to(p.device, p.dtype), decoder_input_ids=start).last_hidden_state
