"""Spoken replies, without the UI: split a streaming answer into sentences and speak each one as
soon as it is complete, so the first sentence plays while the rest is still being generated.

    reply = SpokenReply(Espeak(), question_end=t_end)
    for text_so_far in stream: reply.on_text(text_so_far)   # sentences go to the synthesizer
    for chunk in reply.ready(): play(chunk.wav)              # WAV bytes, one per sentence
    fields = reply.on_done(final_text)                       # first_audio_s, ... for the turn record

The synthesizer runs in a thread of its own so that decoding never waits for it. The default
voice is espeak-ng, called as a subprocess (offline, installed by scripts/setup.sh).
"""

from __future__ import annotations

import io
import queue
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import soundfile as sf

# a sentence ends at . ! ? ; (or a newline) followed by a space; "e.g. ", "U.S. " and "3.5" do not end one
_END = re.compile(r"(?<!\b[A-Za-z]\.)(?<=[.!?;\u3002\uff01\uff1f])[\"')\]]*\s+|\n+")
MIN_CHARS = 12  # shorter pieces wait for the next one ("Yes." alone would be spoken fine, "1." not)


def split_sentences(text: str) -> tuple[list[str], str]:
    """The complete sentences at the start of `text`, and the rest (an unfinished sentence).
    A sentence is complete once the whitespace after its end mark has arrived."""
    done, start = [], 0
    for m in _END.finditer(text):
        piece = text[start:m.end()].strip()
        if len(piece) >= MIN_CHARS or (piece and m.group().startswith("\n")):
            done.append(piece)
            start = m.end()
    return done, text[start:]


class SentenceStream:
    """Fed the whole answer so far at each step (as the chat streams it); returns the sentences
    completed since the last call. `flush` returns what is left at the end."""

    def __init__(self):
        self.consumed = 0  # characters of the answer already handed out

    def push(self, text: str) -> list[str]:
        done, rest = split_sentences(text[self.consumed:])
        self.consumed = len(text) - len(rest)
        return done

    def flush(self, text: str) -> list[str]:
        done = self.push(text)
        rest = text[self.consumed:].strip()
        self.consumed = len(text)
        return done + ([rest] if speakable(rest) else [])


def speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


class TtsError(RuntimeError):
    code = "tts_failed"


@dataclass(frozen=True)
class Espeak:
    """espeak-ng as a subprocess: text in, 22.05 kHz mono 16-bit WAV bytes out."""

    voice: str = "en-us"
    words_per_minute: int = 165
    binary: str = "espeak-ng"
    name: str = "espeak-ng"

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def synthesize(self, text: str) -> bytes:
        if not self.available():
            raise TtsError(f"{self.binary} is not installed (apt-get install espeak-ng); "
                           "answers cannot be spoken.")
        # "--" ends the options: a sentence starting with "-" is text, never a flag
        run = subprocess.run([self.binary, "-v", self.voice, "-s", str(self.words_per_minute), "--stdout", "--", text],
                             capture_output=True, timeout=60)
        if run.returncode != 0 or not run.stdout:
            raise TtsError(f"{self.binary} failed: {run.stderr.decode(errors='replace')[-200:]}")
        return run.stdout


@dataclass(frozen=True)
class SpokenChunk:
    sentence: str
    wav: bytes  # a whole WAV file (what a streaming gr.Audio output takes)
    ready_at: float  # time.perf_counter() when it was synthesized
    duration_s: float


def wav_duration(wav: bytes) -> float:
    info = sf.info(io.BytesIO(wav))
    return info.frames / info.samplerate


def join_wavs(chunks: list[bytes]) -> bytes:
    """One WAV of the sentences in order (all of one synthesizer: one rate)."""
    parts = [sf.read(io.BytesIO(c), dtype="int16") for c in chunks]
    out = io.BytesIO()
    sf.write(out, np.concatenate([a for a, _ in parts]), parts[0][1], format="WAV", subtype="PCM_16")
    return out.getvalue()


@dataclass
class SpokenReply:
    """One answer being spoken. `question_end`: perf_counter() at the end of the question (the end
    of speech in hands-free mode, the click otherwise): what `first_audio_s` counts from."""

    tts: Espeak | None  # None: nothing is spoken, only the timings are taken
    question_end: float
    keep: Callable[[bytes], str] | None = None  # stores the spoken answer (consent given): its data-dir path
    sentences: SentenceStream = field(default_factory=SentenceStream)
    chunks: list[SpokenChunk] = field(default_factory=list)
    first_token_at: float | None = None
    error: str | None = None
    _todo: queue.Queue = field(default_factory=queue.Queue)
    _handed: int = 0
    _worker: threading.Thread | None = None

    def on_text(self, text: str) -> None:
        """The answer so far (each streamed step)."""
        if self.first_token_at is None and text:
            self.first_token_at = time.perf_counter()
        for sentence in self.sentences.push(text):
            self._say(sentence)

    def _say(self, sentence: str) -> None:
        if self.tts is None:  # timings only: the answers are not spoken
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, daemon=True, name="tts")
            self._worker.start()
        self._todo.put(sentence)

    def _run(self) -> None:
        while (sentence := self._todo.get()) is not None:
            try:
                wav = self.tts.synthesize(sentence)
                self.chunks.append(SpokenChunk(sentence, wav, time.perf_counter(), wav_duration(wav)))
            except (TtsError, OSError, subprocess.SubprocessError, RuntimeError) as err:
                self.error = str(err)

    def ready(self) -> list[SpokenChunk]:
        """The sentences synthesized since the last call, in order."""
        new = self.chunks[self._handed:]
        self._handed += len(new)
        return new

    def finish(self, text: str) -> None:
        """The answer is complete: speak what is left, and wait until every sentence is spoken."""
        if self.first_token_at is None and text:
            self.first_token_at = time.perf_counter()
        for sentence in self.sentences.flush(text):
            self._say(sentence)
        if self._worker is not None:
            self._todo.put(None)
            self._worker.join()

    def stop(self) -> None:
        """Abandon the rest (barge-in): the worker ends after the sentence it is on."""
        while not self._todo.empty():
            self._todo.get_nowait()
        if self._worker is not None:
            self._todo.put(None)

    def on_done(self, text: str) -> dict:
        """Called before the turn is recorded: the spoken-reply fields of the turn record."""
        self.finish(text)
        fields = self.timings()
        if self.keep is not None and self.chunks:
            fields["reply_audio_path"] = self.keep(self.audio())
        return fields

    def timings(self) -> dict:
        first = self.chunks[0].ready_at - self.question_end if self.chunks else None
        ttft = self.first_token_at - self.question_end if self.first_token_at is not None else None
        return {"first_audio_s": first, "question_end_ttft_s": ttft}

    @property
    def duration_s(self) -> float:
        return sum(c.duration_s for c in self.chunks)

    def audio(self) -> bytes | None:
        """The whole spoken answer as one WAV (for the player in the chat), or None."""
        return join_wavs([c.wav for c in self.chunks]) if self.chunks else None
