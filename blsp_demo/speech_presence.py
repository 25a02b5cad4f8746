"""Is there speech in this audio? Silero VAD (pip `silero-vad`, MIT, its model ships in the
package) decides before any model hears an upload, so noise, music and hum get a clear refusal
(`AudioError("no_speech")`) instead of an answer.

    detector = SpeechDetector()             # loads the 2 MB JIT model once (not thread-safe: locked)
    detector.check(samples)                 # 16 kHz float32 -> SpeechReport, or AudioError
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from blsp_demo.audio import SAMPLE_RATE, AudioError


@dataclass(frozen=True)
class SpeechOptions:
    threshold: float = 0.5  # silero's default probability for a speech frame
    min_speech_s: float = 0.25  # a spoken word lasts at least this long
    min_total_speech_s: float = 0.3  # less speech than this in a whole clip: no question in it


@dataclass(frozen=True)
class SpeechReport:
    speech_s: float  # seconds of speech found
    segments: int
    duration_s: float


class SpeechDetector:
    def __init__(self, options: SpeechOptions = SpeechOptions()):
        self.options = options
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            from silero_vad import load_silero_vad

            self._model = load_silero_vad()
        return self._model

    def measure(self, samples: np.ndarray) -> SpeechReport:
        """How much speech the 16 kHz clip holds."""
        import torch
        from silero_vad import get_speech_timestamps

        with self._lock, torch.inference_mode():
            model = self._load()
            stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), model,
                                           threshold=self.options.threshold, sampling_rate=SAMPLE_RATE,
                                           min_speech_duration_ms=int(self.options.min_speech_s * 1000))
            model.reset_states()
        speech = sum(s["end"] - s["start"] for s in stamps) / SAMPLE_RATE
        return SpeechReport(speech, len(stamps), len(samples) / SAMPLE_RATE)

    def check(self, samples: np.ndarray) -> SpeechReport:
        """The report, or AudioError("no_speech") when the clip holds too little speech."""
        report = self.measure(samples)
        if report.speech_s < self.options.min_total_speech_s:
            raise AudioError("no_speech", f"No speech was found in this audio ({report.duration_s:.1f} s; "
                                          f"{report.speech_s:.1f} s sound like a voice). Record your question "
                                          "again, closer to the microphone, or check the file.")
        return report
