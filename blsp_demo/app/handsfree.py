"""Hands-free mode without the UI: the microphone stays open; the VAD's pause ends a question,
which is then sent without a click; speech while an answer is being written or spoken stops it
(barge-in) and becomes the next question.

    hf = HandsFree(folder)
    for action in hf.on_audio(sample_rate, samples, now):     # each microphone chunk
        if action.kind == "barge": cancel the running answer, stop the player
        if action.kind == "question": answer action.path (a 16 kHz WAV); action.speech_end is when it ended
    hf.answering(); hf.spoken(duration_s, now); hf.answered(now)   # what the answer side reports
    hf.phase(now)   # listening | hearing | thinking | speaking: the indicator

Times are `time.perf_counter()` values. The speech end of a question is the wall-clock time the
speaker stopped, not when the VAD noticed (that is `min_silence_ms` later).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from blsp_demo.app.records import new_id
from blsp_demo.app.vad import RATE, Segmenter, VadOptions

PHASES = ("listening", "hearing", "thinking", "speaking")


@dataclass(frozen=True)
class Action:
    kind: str  # "barge" | "question"
    path: str | None = None  # "question": the utterance as a 16 kHz WAV
    speech_end: float | None = None  # perf_counter() when the speaker stopped
    duration_s: float = 0.0


@dataclass
class HandsFree:
    """One session's open microphone. `on_audio` runs on the stream's events, the rest on the
    answer's: a lock keeps the two consistent."""

    folder: Path  # where utterances are written until the turn takes them (and removes them)
    options: VadOptions = VadOptions()
    segmenter: Segmenter | None = None
    turns: int = 0  # questions sent
    barge_ins: int = 0
    _answering: bool = False
    _speaking_until: float = 0.0
    _hearing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segmenter = self.segmenter or Segmenter(self.options)

    def busy(self, now: float) -> bool:
        """An answer is being written or is still playing."""
        return self._answering or now < self._speaking_until

    def on_audio(self, sample_rate: int, samples, now: float) -> list[Action]:
        """A microphone chunk that arrived at `now`; what to do about it."""
        events = self.segmenter.feed(sample_rate, samples)
        actions = []
        with self._lock:
            for ev in events:
                if ev.kind == "start":
                    self._hearing = True
                    if self.busy(now):
                        self.barge_ins += 1
                        self._answering, self._speaking_until = False, 0.0
                        actions.append(Action("barge"))
                elif ev.kind == "end" and ev.audio is not None:
                    self._hearing = False
                    lag = (self.segmenter.total - ev.sample) / RATE  # audio since the speaker stopped
                    path = self.folder / f"question-{self.turns:03d}-{new_id()[:8]}.wav"
                    sf.write(path, ev.audio, RATE, subtype="PCM_16")
                    self.turns += 1
                    self._answering = True
                    actions.append(Action("question", str(path), now - lag, len(ev.audio) / RATE))
        return actions

    # -- what the answer side reports
    def answering(self) -> None:
        with self._lock:
            self._answering = True

    def spoken(self, duration_s: float, now: float) -> None:
        """A sentence of audio went to the player: it plays after what is queued."""
        with self._lock:
            self._speaking_until = max(self._speaking_until, now) + duration_s

    def answered(self) -> None:
        """The answer's text is complete (or it failed, or was cancelled)."""
        with self._lock:
            self._answering = False

    def stop_speaking(self) -> None:
        with self._lock:
            self._speaking_until = 0.0

    def phase(self, now: float) -> str:
        with self._lock:
            if self._hearing:
                return "hearing"
            if now < self._speaking_until:
                return "speaking"
            return "thinking" if self._answering else "listening"
