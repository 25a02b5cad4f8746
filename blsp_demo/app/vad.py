"""Voice-activity segmentation of a live microphone stream, without the UI: Silero VAD (the
`silero-vad` pip package, which ships its model files; MIT licence) decides speech / no speech
for each 32 ms window and when a pause is long enough to end an utterance (its `VADIterator`).

    seg = Segmenter()
    for sample_rate, samples in microphone_chunks:
        for event in seg.feed(sample_rate, samples):
            ...  # VadEvent("start", ...) when speech began, VadEvent("end", ..., audio) after the pause

This module only cuts the stream and resamples it (scipy); the speech/no-speech decision is the
library's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RATE = 16_000  # what Silero VAD (and Whisper) take
WINDOW = 512  # samples per VAD decision at 16 kHz (32 ms)


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # speech probability that counts as speech
    min_silence_ms: int = 700  # a pause this long ends the question
    min_speech_ms: int = 250  # shorter bursts (a click, a cough) are not a question and interrupt nothing
    pad_ms: int = 120  # kept before and after the speech
    max_utterance_s: float = 60.0  # a question that runs on this long is cut and sent


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" (speech began: barge-in point) | "end" (the pause came: the question is complete)
    sample: int  # position in the stream, in 16 kHz samples
    audio: np.ndarray | None = None  # "end": the utterance, 16 kHz mono float32


def to_mono_16k(sample_rate: int, samples: np.ndarray) -> np.ndarray:
    """A microphone chunk (int16 or float, mono or channels last) as 16 kHz mono float32."""
    from math import gcd

    from scipy.signal import resample_poly

    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / np.iinfo(x.dtype).max
    x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sample_rate != RATE:
        g = gcd(int(sample_rate), RATE)
        x = resample_poly(x, RATE // g, int(sample_rate) // g).astype(np.float32)
    return x


def load_vad_model():
    """Silero VAD's model from the pip package (no download). One per stream: it keeps state."""
    from silero_vad import load_silero_vad

    return load_silero_vad()


@dataclass
class Segmenter:
    """Cuts one live stream into utterances. Not thread-safe: one stream feeds it."""

    options: VadOptions = VadOptions()
    model: object = None
    total: int = 0  # 16 kHz samples seen
    _iterator: object = None
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # < one window
    _kept: list = field(default_factory=list)  # audio since `_kept_from` (the pre-roll or the utterance)
    _kept_from: int = 0
    _start: int | None = None  # speech start (samples) of the utterance being heard
    _confirmed: bool = False  # the speech has lasted min_speech_ms: a "start" was reported

    def __post_init__(self):
        from silero_vad import VADIterator

        self.model = self.model or load_vad_model()
        self._iterator = VADIterator(self.model, threshold=self.options.threshold, sampling_rate=RATE,
                                     min_silence_duration_ms=self.options.min_silence_ms,
                                     speech_pad_ms=self.options.pad_ms)

    @property
    def in_speech(self) -> bool:
        return self._confirmed

    def feed(self, sample_rate: int, samples: np.ndarray) -> list[VadEvent]:
        x = np.concatenate([self._pending, to_mono_16k(sample_rate, samples)])
        n = len(x) // WINDOW * WINDOW
        self._pending = x[n:]
        events: list[VadEvent] = []
        for i in range(0, n, WINDOW):
            events += self._window(x[i:i + WINDOW])
        return events

    def _window(self, w: np.ndarray) -> list[VadEvent]:
        import torch

        self._kept.append(w)
        self.total += len(w)
        decision = self._iterator(torch.from_numpy(w)) or {}
        events: list[VadEvent] = []
        if "start" in decision:
            self._start, self._confirmed = int(decision["start"]), False
        opt = self.options
        if self._start is not None and not self._confirmed and "end" not in decision \
                and self.total - self._start >= opt.min_speech_ms * RATE // 1000:
            self._confirmed = True
            events.append(VadEvent("start", self._start))
        too_long = self._start is not None and self.total - self._start >= opt.max_utterance_s * RATE
        if "end" in decision or too_long:
            end = min(int(decision.get("end", self.total)), self.total)
            if self._confirmed:
                events.append(VadEvent("end", end, self._cut(self._start, end)))
            self._start, self._confirmed = None, False
            if too_long:
                self._iterator.reset_states()
        if self._start is None:
            self._trim()
        return events

    def _cut(self, start: int, end: int) -> np.ndarray:
        audio = np.concatenate(self._kept)
        return audio[max(0, start - self._kept_from):max(0, end - self._kept_from)].copy()

    def _trim(self) -> None:
        """Between utterances keep only a short pre-roll (the VAD reports starts a little late)."""
        keep = (self.options.pad_ms * RATE // 1000) // WINDOW + 2
        if len(self._kept) > keep:
            drop = len(self._kept) - keep
            self._kept_from += sum(len(w) for w in self._kept[:drop])
            del self._kept[:drop]
