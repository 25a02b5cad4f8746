"""Many sessions at once: gradio_client sessions, each with mixed spoken and typed turns about a
made-up word of its own, and a label on every answer.

`run_load(url, data_dir, options, folder)` starts all sessions together and measures, per turn,
the time from submitting to the first token the client sees (TTFT) and to the server starting the
job (queue wait). Then `check_load` reads the data dir and proves
- zero errors;
- zero leakage: a session only ever sees its own word (in every streamed partial too), its turns
  are logged under its own session and conversation, and each audio it is shown is its own;
- every acknowledged label persisted exactly once, on the right turn; every records file is valid
  JSONL (`pandas.read_json(lines=True)` reads it, no bad line).
`stop` (a threading.Event) ends the sessions early: the crash scenario kills the server mid-load.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .server import close_soon

SYLLABLES = ("bl", "dr", "gl", "kr", "pl", "qu", "sn", "tr", "v", "z", "fr", "gr", "sk", "th", "m", "n")
VOWELS = ("a", "e", "i", "o", "u", "oo", "ai", "ey")
CODAS = ("x", "sh", "rk", "mp", "nd", "lt", "zz", "ck", "rb", "nt")
SPOKEN = "Tell me about the word {word}. Is {word} a real word?"
TYPED = ("What could the word {word} mean?", "Write one sentence that uses {word}.",
         "Is {word} a noun or a verb?", "Spell {word} backwards.", "Give {word} a definition.")


@dataclass(frozen=True)
class LoadOptions:
    sessions: int = 20
    turns: int = 5  # per session: text, speech, text, speech, text, ...
    seed: int = 7
    timeout_s: float = 900.0  # per turn, queue wait included
    poll_s: float = 0.02  # how often a client looks at its job (TTFT and queue wait resolution)


@dataclass
class TurnSample:
    session: int
    index: int
    modality: str
    ttft_s: float | None  # submit -> first answer token seen by the client
    queue_wait_s: float | None  # submit -> the server starts the job
    total_s: float
    turn_id: str | None = None
    message_index: int | None = None
    error: str | None = None


@dataclass
class SessionRun:
    index: int
    word: str
    samples: list[TurnSample] = field(default_factory=list)
    labels_acked: list[tuple[str, str]] = field(default_factory=list)  # (reason token, turn id)
    seen: list[str] = field(default_factory=list)  # everything the client received, as text
    audio: dict[str, Path] = field(default_factory=dict)  # sha256 -> the session's own recordings
    errors: list[str] = field(default_factory=list)


def made_up_words(n: int, seed: int) -> list[str]:
    """`n` distinct pronounceable non-words, none inside another."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < n:
        w = rng.choice(SYLLABLES) + rng.choice(VOWELS) + rng.choice(SYLLABLES[:10]) + rng.choice(VOWELS) \
            + rng.choice(CODAS)
        if all(w not in o and o not in w for o in words):
            words.append(w)
    return words


def speak(text: str, out: Path) -> Path:
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "130", "-w", str(raw), text], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), "-ar", "16000", "-ac", "1",
                    str(out)], check=True)
    raw.unlink()
    return out


def plan(options: LoadOptions, folder: Path) -> list[SessionRun]:
    """Sessions with their words and their recordings (one per spoken turn, each distinct)."""
    from blsp_demo.files import content_sha256

    folder.mkdir(parents=True, exist_ok=True)
    runs = [SessionRun(i, w) for i, w in enumerate(made_up_words(options.sessions, options.seed))]
    for run in runs:
        for t in range(1, options.turns, 2):
            path = speak(SPOKEN.format(word=run.word) + f" Question {t + 1}.", folder / f"{run.word}-{t}.wav")
            run.audio[content_sha256(path)] = path
    return runs


def turn_input(run: SessionRun, t: int):
    from gradio_client import handle_file

    if t % 2 == 1:
        path = next(p for p in run.audio.values() if p.name == f"{run.word}-{t}.wav")
        return "speech", (handle_file(str(path)), ""), "/chat_audio"
    return "text", (TYPED[(t // 2) % len(TYPED)].format(word=run.word),), "/chat_text"


def has_answer(output) -> bool:
    history = output[0] if output else None
    return bool(history) and history[-1]["role"] == "assistant" and bool(str(history[-1]["content"]).strip())


def timed_turn(client, run: SessionRun, t: int, options: LoadOptions) -> TurnSample:
    from gradio_client.utils import Status

    modality, args, api = turn_input(run, t)
    t0 = time.perf_counter()
    job = client.submit(*args, api_name=api)
    started = first = None
    while not job.done() and time.perf_counter() - t0 < options.timeout_s:
        now = time.perf_counter()
        if started is None and job.status().code in (Status.PROCESSING, Status.ITERATING):
            started = now
        if first is None:
            outputs = job.outputs()
            if outputs and has_answer(outputs[-1]):
                first, started = now, started or now
        time.sleep(options.poll_s)
    sample = TurnSample(run.index, t, modality, None, None, 0.0)
    try:
        history, details, _, _ = job.result(timeout=max(1.0, options.timeout_s - (time.perf_counter() - t0)))
    except Exception as err:  # noqa: BLE001 - counted as an error of the run
        sample.error = f"{type(err).__name__}: {err}"
        return sample
    end = time.perf_counter()
    run.seen += [repr(o) for o in job.outputs()] + [repr(history), repr(details)]
    sample.ttft_s = (first or end) - t0
    sample.queue_wait_s = (started or first or end) - t0
    sample.total_s = end - t0
    sample.turn_id, sample.message_index = details["turn_id"], details["message_index"]
    return sample


def converse(url: str, run: SessionRun, options: LoadOptions, start: threading.Barrier,
             stop: threading.Event) -> SessionRun:
    from gradio_client import Client

    client = None
    try:
        client = Client(url, verbose=False)
        start.wait(timeout=300)
        for t in range(options.turns):
            if stop.is_set():
                break
            sample = timed_turn(client, run, t, options)
            run.samples.append(sample)
            if sample.error:
                run.errors.append(f"turn {t}: {sample.error}")
                continue
            reason = f"{run.word}-label-{t}"
            verdict = ("accept", "reject")[t % 2]
            try:
                client.predict(sample.message_index, verdict, reason, api_name="/feedback")
            except Exception as err:  # noqa: BLE001 - an unacknowledged label
                run.errors.append(f"label {t}: {type(err).__name__}: {err}")
                continue
            run.labels_acked.append((reason, sample.turn_id))
    except Exception as err:  # noqa: BLE001 - the session itself failed (e.g. the server was killed)
        start.abort()  # sessions still waiting to start would wait for this one forever
        run.errors.append(f"session: {type(err).__name__}: {err}")
    finally:
        if client is not None:
            close_soon(client)
    return run


def run_sessions(url: str, runs: list[SessionRun], options: LoadOptions,
                 stop: threading.Event | None = None) -> list[SessionRun]:
    """All sessions at once (they start together); returns when every one is done or stopped."""
    stop = stop or threading.Event()
    start = threading.Barrier(len(runs))
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        return list(pool.map(lambda r: converse(url, r, options, start, stop), runs))


def run_load(url: str, options: LoadOptions, folder: Path) -> list[SessionRun]:
    return run_sessions(url, plan(options, Path(folder)), options)


# ---- checking ------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    sessions: int
    turns_planned: int
    turns_answered: int
    errors: list[str]
    leaks: list[str]
    labels_acked: int
    labels_written: int  # label records carrying an acknowledged reason
    labels_missing: list[str]
    labels_duplicated: list[str]
    bad_lines: int
    pandas_ok: bool
    ttft: dict  # p50, p95, max (seconds), n
    queue_wait: dict
    ttft_by_modality: dict
    wall_s: float = 0.0

    @property
    def problems(self) -> list[str]:
        out = [f"error: {e}" for e in self.errors] + [f"leak: {x}" for x in self.leaks]
        out += [f"label lost: {x}" for x in self.labels_missing] + [f"label doubled: {x}" for x in self.labels_duplicated]
        if self.bad_lines or not self.pandas_ok:
            out.append(f"records not valid JSONL ({self.bad_lines} bad lines, pandas ok: {self.pandas_ok})")
        return out


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3)}


def check_load(runs: list[SessionRun], data_dir: Path, turns_per_session: int) -> LoadReport:
    from blsp_demo.app.store import read_records, records_files

    result = read_records(data_dir)
    records = result.records
    by_id = {r["id"]: r for r in records}
    words = [r.word for r in runs]
    errors = [f"session {r.index} ({r.word}) {e}" for r in runs for e in r.errors]
    leaks = [x for r in runs for x in session_leaks(r, words, by_id)]
    label_reasons = [r.get("reason") for r in records if r["kind"] == "label"]
    acked = [(reason, turn) for r in runs for reason, turn in r.labels_acked]
    missing = [reason for reason, _ in acked if label_reasons.count(reason) == 0]
    doubled = [reason for reason, _ in acked if label_reasons.count(reason) > 1]
    wrong_turn = [reason for reason, turn in acked if any(r.get("reason") == reason and r["turn_id"] != turn
                                                         for r in records if r["kind"] == "label")]
    samples = [s for r in runs for s in r.samples if s.error is None]
    return LoadReport(
        sessions=len(runs), turns_planned=len(runs) * turns_per_session, turns_answered=len(samples),
        errors=errors, leaks=leaks + [f"label on another turn: {x}" for x in wrong_turn],
        labels_acked=len(acked), labels_written=sum(label_reasons.count(reason) for reason, _ in acked),
        labels_missing=missing, labels_duplicated=doubled, bad_lines=len(result.bad_lines),
        pandas_ok=pandas_reads(records_files(data_dir)),
        ttft=percentiles([s.ttft_s for s in samples]), queue_wait=percentiles([s.queue_wait_s for s in samples]),
        ttft_by_modality={m: percentiles([s.ttft_s for s in samples if s.modality == m]) for m in ("speech", "text")})


def session_leaks(run: SessionRun, words: list[str], by_id: dict) -> list[str]:
    seen = " ".join(run.seen).lower()
    leaks = [f"session {run.index} ({run.word}) saw {w!r}" for w in words if w != run.word and w in seen]
    if run.samples and run.word not in seen:
        leaks.append(f"session {run.index} never saw its own word {run.word!r}")
    turns = [by_id.get(s.turn_id) for s in run.samples if s.turn_id]
    if any(t is None for t in turns):
        leaks.append(f"session {run.index}: an acknowledged turn is not in the records")
    turns = [t for t in turns if t is not None]
    if len({t["session"] for t in turns}) > 1 or len({t["conversation"] for t in turns}) > 1:
        leaks.append(f"session {run.index}: its turns are logged under several sessions or conversations")
    foreign = {t.get("audio_sha256") for t in turns if t.get("audio_sha256")} - set(run.audio)
    if foreign:
        leaks.append(f"session {run.index}: its turns carry audio that is not its own: {sorted(foreign)}")
    return leaks


def pandas_reads(paths: list[Path]) -> bool:
    import pandas as pd

    try:
        for path in paths:
            pd.read_json(path, lines=True)
    except ValueError:
        return False
    return True
