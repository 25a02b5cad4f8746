"""Spoken inputs for the benchmarks, made at run time with espeak-ng (no audio is committed).

- `five_second_clip`: a spoken question padded with silence to exactly 5 s (the chat's question);
- `chat_script`: turns 1..n of a conversation alternating speech (odd turns) and text (even turns);
- `question_clips`: the project's spoken questions (`spoken_questions.jsonl`), one voice each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from blsp_demo.audio import SAMPLE_RATE
from blsp_demo.train.corpus import ESPEAK_RATE, espeak, load_questions

RESAMPLE = (320, 441)  # 22050 Hz * 320 / 441 = 16000 Hz
QUESTION_SECONDS = 5.0
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+m7", "en-gb-x-rp+f2")
SPOKEN_TURNS = (  # about 4.5 s each at 150 words/min
    "Could you tell me what the capital of France is, and why it matters?",
    "How many days are there in a week, and where do their names come from?",
    "Please explain why the sky looks blue on a clear and sunny day.",
    "What do plants need to grow well in a small garden by the sea?",
    "Which planet in our solar system is the largest, and how big is it?",
)
TEXT_TURNS = (
    "Thanks. Can you say that again in one short sentence?",
    "Interesting. What else should I know about it?",
    "Could you give me one more example, please?",
    "Is that always true, or are there exceptions?",
    "Great, and how would you explain that to a child?",
)


@dataclass(frozen=True)
class UserTurn:
    """One user turn of the benchmark conversation: speech (a clip path) or text."""

    audio: str | None = None
    text: str = ""


def speak(text: str, voice: str = "en-us", rate: int = 150) -> np.ndarray:
    """16 kHz mono float32 speech."""
    if ESPEAK_RATE * RESAMPLE[0] // RESAMPLE[1] != SAMPLE_RATE:
        raise RuntimeError("espeak-ng's rate changed: update RESAMPLE")
    return resample_poly(espeak(text, voice, rate, 50), *RESAMPLE).astype(np.float32)


def fit_to(samples: np.ndarray, seconds: float) -> np.ndarray:
    """Exactly `seconds` long: trailing silence added, or the end cut."""
    n = int(round(seconds * SAMPLE_RATE))
    return np.pad(samples[:n], (0, max(0, n - len(samples))))


def five_second_clip(text: str, path: Path, voice: str = "en-us") -> Path:
    """A spoken question of exactly 5 s: spoken faster when 150 words/min would not fit."""
    speech = speak(text, voice)
    limit = QUESTION_SECONDS - 0.2
    if len(speech) > limit * SAMPLE_RATE:
        speech = speak(text, voice, rate=int(150 * len(speech) / (limit * SAMPLE_RATE)) + 1)
    return write_wav(path, fit_to(speech, QUESTION_SECONDS))


def write_wav(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")
    return path


def chat_script(folder: Path, turns: int) -> list[UserTurn]:
    """Turns 1..`turns`: speech on odd turns (5 s each, different questions), text on even ones."""
    script = []
    for k in range(turns):
        i = k // 2
        if k % 2 == 0:
            text = SPOKEN_TURNS[i % len(SPOKEN_TURNS)]
            clip = five_second_clip(text, folder / f"turn{k + 1:02d}.wav", VOICES[i % len(VOICES)])
            script.append(UserTurn(audio=str(clip)))
        else:
            script.append(UserTurn(text=TEXT_TURNS[i % len(TEXT_TURNS)]))
    return script


def question_clips(folder: Path, n: int) -> list[tuple[str, str]]:
    """`n` spoken questions (cycling through the project's list and the voices): (path, question)."""
    questions = [q["question"] for q in load_questions()]
    out = []
    for i in range(n):
        text = questions[i % len(questions)]
        path = write_wav(folder / f"q{i:03d}.wav", speak(text, VOICES[i % len(VOICES)], rate=140 + 5 * (i % 7)))
        out.append((str(path), text))
    return out
