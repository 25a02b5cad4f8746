"""The official BLSP code path, rewritten by the project from its facts (notes/official-blsp.md):
the yardstick the engine is measured against. Nothing here is used outside the benchmarks.

What it does, as the release's `chat_demo.py` and `generate.py` do:
- a clip's log-mel features are computed once, padded to 30 s (3000 frames), when its turn is
  added to the history (anything past 30 s is cut off);
- on every turn, every speech turn of the history goes through the Whisper encoder again (the
  full 30 s window), then the subsampler, adapter and LayerNorm, and the embeddings of the whole
  history are concatenated;
- `generate` starts from scratch on the whole history each turn: a KV cache lives only inside one
  `generate` call, nothing is kept between turns;
- batch work goes one example at a time.

- audio is read with soundfile (`get_waveform`: WAV/FLAC/OGG/MP3 only, no checks), not ffmpeg.

What is the same as the engine on purpose, so that only those mechanics differ: the weights, the
prompt (the project's template, each piece tokenized on its own as the official code does),
greedy decoding, and the number of new tokens (`forced_options` blocks the stop tokens until
`max_new_tokens`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from blsp_demo.audio import N_CHUNK_SAMPLES, SAMPLE_RATE
from blsp_demo.options import GenerationOptions
from blsp_demo.conversation import Conversation
from blsp_demo.model.encoder import log_mel
from blsp_demo.prompts import Bos, PromptTemplate, Speech, render

Mel = tuple[torch.Tensor, torch.Tensor]  # (1, n_mels, 3000) features, (1,) real-frame count


def official_waveform(path: str) -> np.ndarray:
    """The official loader: soundfile, channels averaged, resampled to 16 kHz when needed."""
    waveform, rate = sf.read(path, dtype="float32", always_2d=True)  # (n, channels)
    mono = waveform.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = resample_poly(mono, SAMPLE_RATE, rate).astype(np.float32)
    return mono


def forced_options(max_new_tokens: int) -> GenerationOptions:
    """Greedy, exactly `max_new_tokens` new tokens: a reply's length never depends on the path."""
    return GenerationOptions(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, temperature=0.0)


@dataclass(frozen=True)
class Timed:
    """One `generate` call of the official path, timed."""

    ids: list[int]  # the new tokens
    ttft_s: float  # call start -> first new token
    total_s: float
    token_times: tuple[float, ...]  # seconds from the call start to each new token
    token_cpu_times: tuple[float, ...]  # this process's CPU seconds at each new token
    prompt_tokens: int  # positions read by the prefill (all of the history)

    @property
    def tokens_per_s(self) -> float:
        """Decode rate after the first token, as `Response.tokens_per_s` counts it."""
        t = self.token_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    @property
    def tokens_per_cpu_s(self) -> float:
        """Decode rate per second of this process on a CPU: what the rate would be with a core to itself."""
        c = self.token_cpu_times
        return (len(c) - 1) / (c[-1] - c[0]) if len(c) > 1 and c[-1] > c[0] else 0.0


class TokenClock(BaseStreamer):
    """Records when `generate` hands out each new token; its first `put` is the prompt."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter() - self.t0)
            self.cpu_times.append(time.process_time())
        self._prompt_seen = True

    def end(self) -> None:
        pass


class OfficialPath:
    """The official mechanics over a project `BlspModel` (any window setting of its config is ignored:
    the official path always encodes 30 s windows)."""

    window = "full"

    def __init__(self, model, tokenizer, extractor, template: PromptTemplate, stop_ids: list[int],
                 device: torch.device | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.extractor = extractor
        self.template = template
        self.stop_ids = stop_ids
        self.device = device or next(model.parameters()).device
        self.dtype = next(model.subsampler.parameters()).dtype

    @classmethod
    def from_engine(cls, engine) -> "OfficialPath":
        """The same weights, tokenizer, extractor and template as a `BlspEngine`."""
        return cls(engine.frontend.model, engine.tokenizer, engine.frontend.feature_extractor, engine.template,
                   engine.stop_ids, engine.device)

    # ---- the history -------------------------------------------------------------------------
    def mel(self, audio: str) -> Mel:
        """What the official history stores for a speech turn: 30 s padded features and their mask."""
        samples = official_waveform(audio)[:N_CHUNK_SAMPLES]  # the official code silently cuts at 30 s
        return log_mel(self.extractor, samples, self.window)

    def remember(self, conv: Conversation, mels: dict[str, Mel], upto: int | None = None) -> None:
        """Compute the features of the speech turns before `upto` (turn index), as earlier turns would have."""
        for turn in conv.turns[:upto]:
            if turn.audio is not None and turn.audio not in mels:
                mels[turn.audio] = self.mel(turn.audio)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def encode(self, mel: Mel) -> torch.Tensor:
        """Features -> (S, d_llm) speech embeddings through the full 30 s encoder window."""
        features, frames = mel
        emb, lengths = self.model.speech_embeddings(features.to(self.device, self.dtype), frames.to(self.device),
                                                    self.window)  # (1, S, d_llm)
        return emb[0, : int(lengths[0])]

    @torch.inference_mode()
    def history_embeddings(self, conv: Conversation, mels: dict[str, Mel]) -> torch.Tensor:
        """The whole history as LLM input embeddings (1, L, d_llm); every speech turn encoded again."""
        embed = self.model.llama_model.get_input_embeddings()
        parts = []
        for piece in render(self.template, conv):
            if isinstance(piece, Speech):
                audio = conv.turns[piece.turn_index].audio
                if audio not in mels:  # the new turn: its features are computed now
                    mels[audio] = self.mel(audio)
                parts.append(self.encode(mels[audio]).to(embed.weight.dtype))
                continue
            ids = [self.tokenizer.bos_token_id] if isinstance(piece, Bos) else self.tokenize(piece.text)
            parts.append(embed(torch.tensor(ids, device=self.device)))  # (n, d_llm)
        return torch.cat(parts)[None]  # (1, L, d_llm)

    # ---- generation --------------------------------------------------------------------------
    def generation_config(self, options: GenerationOptions) -> GenerationConfig:
        """A config built from scratch, as the official scripts do (no model defaults inherited)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        return GenerationConfig(max_new_tokens=options.max_new_tokens, min_new_tokens=options.min_new_tokens,
                                do_sample=False, num_beams=1, eos_token_id=self.stop_ids, pad_token_id=pad,
                                bos_token_id=self.tokenizer.bos_token_id)

    @torch.inference_mode()
    def respond(self, conv: Conversation, options: GenerationOptions, mels: dict[str, Mel] | None = None) -> Timed:
        """One turn: the whole history from scratch. `mels` is the conversation's stored features
        (the official history); features of a turn not in it are computed inside the timing."""
        if options.temperature > 0 or options.num_beams > 1:
            raise ValueError("the benchmark's official path is greedy only")
        mels = {} if mels is None else mels
        t0 = time.perf_counter()
        embeds = self.history_embeddings(conv, mels)
        clock = TokenClock(t0)
        out = self.model.llama_model.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
            generation_config=self.generation_config(options), streamer=clock)
        total = time.perf_counter() - t0
        return Timed(ids=out[0].tolist(), ttft_s=clock.times[0], total_s=total, token_times=tuple(clock.times),
                     token_cpu_times=tuple(clock.cpu_times), prompt_tokens=embeds.shape[1])

    def respond_each(self, convs: list[Conversation], options: GenerationOptions) -> list[Timed]:
        """Batch work the official way (`generate.py`): one example at a time."""
        return [self.respond(conv, options) for conv in convs]
