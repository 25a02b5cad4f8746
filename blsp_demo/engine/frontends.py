"""How speech reaches the LLM: one small object per system, composed into the chat engine.

- `BlspFrames` (system `blsp`): Whisper encoder + adapter frames inside the prompt (BLSP).
- `LlasmFrames` (`llasm`): Whisper decoder states projected into LLaSM's `<au_patch>` slots.
- `AsrTranscript` (`cascade`, `ctc`): a transcriber (Whisper, or a BLSP model's CTC head) writes
  each speech turn as text, which the LLM reads.
- `KnownTranscript` (`text`): the turn's known transcript goes to the LLM (Text+LLM).

A frontend answers five questions for the engine: which speech turns become text
(`speech_texts`), the frames of a speech clip (`speech_frames`), the input embeddings of ids plus
frames (`embed`), batch work done once for many rows (`prepare_batch`), and what it heard of the
last turn (`transcript`). Speech frames and transcripts are memoized in the conversation's cache
under the clip's content hash, so each clip is decoded and encoded once per conversation.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch

from blsp_demo.audio import AudioError, AudioLimits, load_audio, split_windows
from blsp_demo.conversation import Conversation, SpeechClip, Turn
from blsp_demo.engine.cache import ChatCache
from blsp_demo.model.encoder import log_mel


class SpeechFrontend(Protocol):
    system: str  # the engine's name in every record: blsp | llasm | cascade | ctc | text
    speech_as_frames: bool  # speech reaches the LLM as frames in its prompt (else as text)

    def speech_texts(self, conv: Conversation, cache: ChatCache) -> dict[int, str]: ...

    def speech_frames(self, clip: SpeechClip, cache: ChatCache) -> tuple[str, torch.Tensor]: ...

    def embed(self, ids: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor: ...

    def prepare_batch(self, rows: list[tuple[Conversation, ChatCache]]) -> None: ...

    def transcript(self, conv: Conversation, cache: ChatCache) -> str | None: ...


def clip_key(clip: SpeechClip) -> str:
    """The clip's content hash (made where it entered); a path that was no file has none."""
    if clip.sha256 is None or not Path(clip.path).is_file():
        raise AudioError("not_found", f"The audio file {Path(clip.path).name!r} does not exist.")
    return clip.sha256


def speech_turns(conv: Conversation) -> Iterator[tuple[int, Turn]]:
    return ((i, t) for i, t in enumerate(conv.turns) if t.role == "user" and t.clip is not None)


def token_embeddings(llm) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The embed function of a text-only LLM: (B, L) ids -> (B, L, d); speech frames refused."""
    table = llm.get_input_embeddings()

    def embed(ids: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
        if frames is not None:
            raise ValueError("speech frames given to a text-only LLM")
        return table(ids)

    return embed


class FramesOnly:
    """What a frontend that hears speech as frames says to the text questions: no speech turn
    becomes text, no batch work, nothing transcribed."""

    speech_as_frames = True

    def speech_texts(self, conv, cache):
        return {}

    def prepare_batch(self, rows):
        return None

    def transcript(self, conv, cache):
        return None


class BlspFrames(FramesOnly):
    """BLSP: speech turns enter the LLM as adapter outputs (official checkpoints and micro ones)."""

    system = "blsp"

    def __init__(self, model, feature_extractor, window: str | None = None, limits: AudioLimits = AudioLimits()):
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.window = window or model.config.encoder_window
        self.limits = limits

    def embed(self, ids, frames):
        return self.model.embed_with_speech(ids, frames)

    def speech_frames(self, clip: SpeechClip, cache: ChatCache) -> tuple[str, torch.Tensor]:
        key = f"{clip_key(clip)}:{self.window}"  # the same clip in another window gives other frames
        if key not in cache.speech:
            cache.speech[key] = self.encode_samples(load_audio(clip.path, self.limits))
        return key, cache.speech[key]

    @torch.inference_mode()
    def encode_samples(self, samples) -> torch.Tensor:
        """16 kHz audio of any length -> (S, d_llm); 30 s windows are encoded apart and joined."""
        weight = next(self.model.whisper_model.parameters())  # every BLSP layout has the encoder
        device, dtype = weight.device, weight.dtype
        parts = []
        for window in split_windows(samples):
            features, frames = log_mel(self.feature_extractor, window, self.window)
            emb, lengths = self.model.speech_embeddings(features.to(device, dtype), frames.to(device),
                                                        self.window)  # (1, S, d_llm)
            parts.append(emb[0, : int(lengths[0])])
        return torch.cat(parts)


class LlasmFrames(FramesOnly):
    """LLaSM: Whisper (encoder + decoder over 64 start tokens) -> mm_projector -> 64 slots a window."""

    system = "llasm"

    def __init__(self, model, tower, patch_id: int, limits: AudioLimits = AudioLimits()):
        self.model = model.eval()
        self.tower = tower
        self.patch_id = patch_id  # the `<au_patch>` token: its positions take the frames
        self.audio_token_len = model.config.audio_token_len
        self.limits = limits

    def embed(self, ids, frames):
        return self.model.embed_with_speech(ids, frames)

    def speech_frames(self, clip: SpeechClip, cache: ChatCache) -> tuple[str, torch.Tensor]:
        key = f"{clip_key(clip)}:llasm"
        if key not in cache.speech:
            cache.speech[key] = self.encode_samples(load_audio(clip.path, self.limits))
        return key, cache.speech[key]

    @torch.inference_mode()
    def encode_samples(self, samples) -> torch.Tensor:
        """16 kHz audio -> (64 x windows, d_llm): each 30 s window gives 64 projected decoder states."""
        states = self.tower(self.tower.features(split_windows(samples)))  # (N, 64, d_whisper)
        device = next(self.model.parameters()).device
        return self.model.project_audio(states.to(device)).flatten(0, 1)  # (N*64, d_llm)


class AsrTranscript:
    """Whisper+LLM (`cascade`) or CTC+LLM (`ctc`): each speech turn is transcribed, then read."""

    speech_as_frames = False

    def __init__(self, system: str, asr, embed, limits: AudioLimits = AudioLimits()):
        self.system = system
        self.asr = asr  # callable: 16 kHz float32 samples -> text; optional `asr.batch(list) -> list`
        self.embed = embed
        self.limits = limits
        # One transcription at a time: openai-whisper decodes through forward hooks installed on the
        # shared model, so two at once feed each other's key/value caches (KeyError, or one
        # session's words in another's transcript).
        self._lock = threading.Lock()

    def speech_frames(self, clip, cache):
        raise ValueError(f"the {self.system} system reads transcripts, not speech embeddings")

    def speech_texts(self, conv, cache):
        texts = {}
        for i, turn in speech_turns(conv):
            key = clip_key(turn.clip)
            if key not in cache.transcripts:
                samples = load_audio(turn.clip.path, self.limits)
                with self._lock:
                    cache.transcripts[key] = self.asr(samples).strip()
            texts[i] = cache.transcripts[key]
        return texts

    def prepare_batch(self, rows):
        """One batched ASR call for every untranscribed speech turn of the rows (when the ASR can).
        A failure here is never fatal: the row's own planning reports it."""
        batch = getattr(self.asr, "batch", None)
        if batch is None:
            return
        todo: dict[str, tuple[object, list]] = {}  # clip key -> (samples, caches wanting it)
        for conv, cache in rows:
            for _, turn in speech_turns(conv):
                try:
                    key = clip_key(turn.clip)
                    if key in cache.transcripts:
                        continue
                    if key not in todo:
                        todo[key] = (load_audio(turn.clip.path, self.limits), [])
                    todo[key][1].append(cache)
                except Exception:  # noqa: BLE001 - bad audio: the row's own planning reports it
                    continue
        if not todo:
            return
        with self._lock:
            texts = batch([samples for samples, _ in todo.values()])
        for (key, (_, caches)), text in zip(todo.items(), texts):
            for cache in caches:
                cache.transcripts[key] = text.strip()

    def transcript(self, conv, cache):
        turn = conv.last_user
        if turn is None or turn.clip is None or turn.clip.sha256 is None:
            return None
        return cache.transcripts.get(turn.clip.sha256)


class KnownTranscript:
    """Text+LLM: the known transcript of each speech turn goes to the LLM."""

    system = "text"
    speech_as_frames = False

    def __init__(self, embed):
        self.embed = embed

    def speech_frames(self, clip, cache):
        raise ValueError("the text system reads known transcripts, not speech embeddings")

    def speech_texts(self, conv, cache):
        texts = {}
        for i, turn in speech_turns(conv):
            if not turn.transcript:
                raise ValueError("the text engine needs the transcript of every speech turn; "
                                 "this one has none (use the blsp or cascade engine)")
            texts[i] = turn.transcript
        return texts

    def prepare_batch(self, rows):
        return None

    def transcript(self, conv, cache):
        turn = conv.last_user
        return turn.transcript if turn is not None else None
