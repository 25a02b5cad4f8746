"""Transcribers for the cascade systems: Whisper's own decoder (Whisper+LLM) and a BLSP model's
CTC head (CTC+LLM). Each is a callable: 16 kHz float32 samples -> text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from blsp_demo.weights import hub
from blsp_demo.weights.devices import fast_bf16

if TYPE_CHECKING:  # transformers' modeling code only where a BLSP model is loaded (blsp_demo/model/tokens.py)
    from blsp_demo.model.blsp import BlspModel


@dataclass
class WhisperAsr:
    """Bundled Whisper base as a callable: 16 kHz samples -> transcript (greedy, temperature 0).
    Clips up to 30 s take one decoding pass without timestamps, alone or many at once (`batch`:
    the same text either way); longer ones go through `transcribe`, window by window."""

    model: object
    language: str | None
    device: torch.device
    bf16_encoder: bool = False  # the 30 s encoder pass under bf16 autocast (CPUs with fast bf16: ~3x)

    def _options(self):
        import whisper

        return whisper.DecodingOptions(language=self.language, temperature=0.0, without_timestamps=True,
                                       fp16=self.device.type == "cuda")

    def __call__(self, samples) -> str:
        return self.batch([samples])[0]

    def batch(self, clips: list, size: int = 16) -> list[str]:
        import whisper

        out: list[str | None] = [None] * len(clips)
        short = [i for i, s in enumerate(clips) if len(s) <= whisper.audio.N_SAMPLES]
        long = [i for i, s in enumerate(clips) if len(s) > whisper.audio.N_SAMPLES]
        with torch.inference_mode():
            for i in long:
                out[i] = self.model.transcribe(clips[i], language=self.language, temperature=0.0,
                                               fp16=self.device.type == "cuda",
                                               condition_on_previous_text=False)["text"].strip()
            for start in range(0, len(short), size):
                part = short[start: start + size]
                mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.as_tensor(clips[i]).float()),
                                                                self.model.dims.n_mels) for i in part])  # (b, 80, 3000)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16_encoder):
                    states = self.model.encoder(mels.to(self.device))  # (b, 1500, d)
                dtype = torch.float16 if self.device.type == "cuda" else torch.float32
                results = whisper.decode(self.model, states.to(dtype), self._options())  # takes encoder states as is
                for i, r in zip(part, results):
                    out[i] = r.text.strip()
        return [t or "" for t in out]


def whisper_asr(device: torch.device, language: str | None = None) -> WhisperAsr:
    """Whisper base ASR (language: BLSP_ASR_LANGUAGE, default English)."""
    weights, _ = hub.whisper_base()  # the pip packages, else openai/whisper-base from the Hub
    model = load_whisper(weights.openai_checkpoint_path, device)
    return WhisperAsr(model, language or os.environ.get("BLSP_ASR_LANGUAGE", "en") or None, device,
                      bf16_encoder=device.type == "cpu" and fast_bf16(device))


RANDOM_INITS = frozenset({nn.init.uniform_, nn.init.normal_, nn.init.kaiming_uniform_, nn.init.kaiming_normal_,
                          nn.init.trunc_normal_, nn.init.xavier_uniform_, nn.init.xavier_normal_,
                          torch.Tensor.uniform_, torch.Tensor.normal_})


class SkipRandomInit(TorchFunctionMode):
    """Modules built inside leave their random initialization out (their weights stay untouched, so they
    take no resident memory until the checkpoint's replace them); deterministic buffers (masks, sinusoids)
    and layer-norm constants are still computed. A function mode rather than transformers'
    `no_init_weights`, whose import brings transformers' modeling code (torch._dynamo, ~0.2 GB) into a
    process that needs none of it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RANDOM_INITS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def load_whisper(path, device: torch.device):
    """openai-whisper's model from its checkpoint file, computing in fp32: what `whisper.load_model` gives, without
    the two copies it makes on the way (a randomly initialized model, and the whole checkpoint read into
    memory), which stay in the process's resident memory: the model is built with its initialization
    skipped (its untouched weights take no memory) and each weight is widened from the memory-mapped file
    and put in place."""
    from whisper.model import Conv1d, Linear, ModelDimensions, Whisper

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    with SkipRandomInit():
        model = Whisper(ModelDimensions(**checkpoint["dims"]))
    # The encoder's linear and convolution weights stay as stored when that is float16 (saved so only when
    # lossless): whisper's Linear and Conv1d widen their weight to the input's dtype at each call, so the
    # fp32 encoder computes exactly as before with half its weight memory (a pass runs once per clip; the
    # decoder, which runs once per token, and the layer norms are widened here).
    narrow = {f"encoder.{name}.{p}" for name, mod in model.encoder.named_modules() if isinstance(mod, (Linear, Conv1d))
              for p, _ in mod.named_parameters(recurse=False)}
    state = {k: v.clone() if k in narrow and v.dtype == torch.float16 else v.to(torch.float32, copy=True)
             for k, v in checkpoint["model_state_dict"].items()}
    del checkpoint  # unmaps the file
    model.load_state_dict(state, assign=True)
    return model.to(device)


def ctc_asr(blsp: BlspModel, extractor, tokenizer):
    """A BLSP model's CTC head as a callable ASR (the paper's CTC+LLM baseline): 16 kHz samples ->
    the greedy CTC transcript over the LLM's own tokens."""
    from blsp_demo.model.ctc import greedy_classes
    from blsp_demo.model.encoder import log_mel

    if getattr(blsp, "ctc", None) is None:
        raise ValueError("this BLSP model has no CTC head (speech_compression is 'none')")
    weight = next(blsp.subsampler.parameters())

    def transcribe(samples) -> str:
        with torch.inference_mode():
            features, frames = log_mel(extractor, samples[: 30 * 16000], blsp.config.encoder_window)
            x, n = blsp.speech_embeddings(features.to(weight.device, weight.dtype), frames.to(weight.device),
                                          compress=False)  # (1, S, d): every adapter frame, none selected
            best = blsp.ctc.logits(x[:, : int(n[0])], blsp.llama_model.get_input_embeddings().weight).argmax(-1)[0]
        return tokenizer.decode([blsp.ctc.token_id(c) for c in greedy_classes(best)]).strip()

    return transcribe
