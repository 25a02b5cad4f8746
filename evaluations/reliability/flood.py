"""One client floods the queue; another keeps being served (the per-session rate limit).

`run_flood` measures a question on the quiet server, then sends it from a bystander right after a
flooder submitted `burst` questions at once in one session: the flooder gets one answer and a
clear "one at a time" refusal for each other question (each logged), and the bystander waits about
as long as on the quiet server, not behind the whole burst. `run_per_minute` sends one session's
turns until the per-minute limit refuses one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .server import close_soon

QUESTION = "Name a color."
ONE_AT_A_TIME = "still waiting for an answer"
SLOW_DOWN = "Slow down"


@dataclass
class FloodResult:
    burst: int
    answered: int
    refused: int  # with the one-at-a-time message
    other_errors: list[str]
    refusals_logged: int
    baseline_s: float  # the bystander's question on a quiet server
    bystander_s: float  # the same question during the flood
    burst_s: float  # until the last of the flooder's jobs came back

    @property
    def problems(self) -> list[str]:
        out = [f"flooder: {e}" for e in self.other_errors]
        if self.answered + self.refused != self.burst or self.answered < 1:
            out.append(f"{self.answered} answered and {self.refused} refused of {self.burst}")
        if self.refusals_logged != self.refused:
            out.append(f"{self.refused} refusals but {self.refusals_logged} logged")
        if self.bystander_s > 2.5 * self.baseline_s + 2.0:
            out.append(f"the bystander waited {self.bystander_s:.1f} s (quiet: {self.baseline_s:.1f} s)")
        return out


def timed_question(client) -> float:
    t0 = time.perf_counter()
    client.predict(QUESTION, api_name="/chat_text")
    return time.perf_counter() - t0


def run_flood(url: str, data_dir: Path, burst: int = 10) -> FloodResult:
    from gradio_client import Client

    from .inputs import session_of

    flooder, bystander = Client(url, verbose=False), Client(url, verbose=False)
    try:
        baseline = timed_question(bystander)
        first = flooder.predict("Hello.", api_name="/chat_text")[1]  # the session exists before the flood
        session = session_of(data_dir, first["turn_id"])
        t0 = time.perf_counter()
        jobs = [flooder.submit(f"{QUESTION} ({i})", api_name="/chat_text") for i in range(burst)]
        during = timed_question(bystander)
        outcomes = [job_outcome(job) for job in jobs]
        burst_s = time.perf_counter() - t0
    finally:
        close_soon(flooder)
        close_soon(bystander)
    refused = [o for o in outcomes if o and ONE_AT_A_TIME in o]
    others = [o for o in outcomes if o and ONE_AT_A_TIME not in o]
    return FloodResult(burst, outcomes.count(None), len(refused), others,
                       count_refusals(data_dir, session), round(baseline, 2), round(during, 2), round(burst_s, 2))


def job_outcome(job) -> str | None:
    """None when answered, else the error the person saw."""
    try:
        job.result(timeout=600)
        return None
    except Exception as err:  # noqa: BLE001 - the refusal is the point
        return str(err)


def count_refusals(data_dir: Path, session: str) -> int:
    from blsp_demo.app.store import read_records

    return sum(r["kind"] == "turn" and r.get("session") == session and r.get("error_code") == "rate_limited"
               for r in read_records(data_dir).records)


@dataclass
class PerMinuteResult:
    limit: int
    refused_at: int | None  # which attempt (1-based) was refused with the per-minute message
    message: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def run_per_minute(url: str, limit: int) -> PerMinuteResult:
    """Empty messages are admitted (and refused as empty) at no cost: the limit counts admissions."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    result = PerMinuteResult(limit, None)
    t0 = time.perf_counter()
    try:
        for attempt in range(1, limit + 3):
            try:
                client.predict("", api_name="/chat_text")
            except Exception as err:  # noqa: BLE001 - every attempt is refused, one way or the other
                if SLOW_DOWN in str(err):
                    result.refused_at, result.message = attempt, str(err)
                    break
    finally:
        close_soon(client)
    result.seconds = round(time.perf_counter() - t0, 2)
    if result.refused_at != limit + 1:
        result.problems.append(f"the per-minute limit of {limit} refused attempt {result.refused_at}")
    return result
