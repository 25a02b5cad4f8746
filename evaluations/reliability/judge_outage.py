"""The judge when its server fails: 429, 500, timeouts, hangs, replies trickling in, garbage.

`run_outages` judges the answered turns of a data dir with `evaluations.judge_logs` (the command's
own functions) against `FakeOpenAI` in each outage in turn, then once more with the server well:
- every row of an outage is written `unjudged` with a reason that names the failure;
- no row takes longer than the configured deadline, and no row sends more than 1 + retries requests;
- the rerun judges exactly the rows left unjudged, and then none is left.
`judge_injections` checks that turns carrying text aimed at the judge are flagged and that the
text never reaches the (gullible) judge server.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from blsp_demo.judge import redact_injection

from .fake_openai import FakeOpenAI

# name: (what the server does, a phrase the unjudged reason must contain)
OUTAGES = {
    "429": ((429, "rate limited", 0.0), "HTTP 429"),
    "500": ((500, "internal error", 0.0), "HTTP 500"),
    "timeout": ((200, "Verdict: acceptable", 5.0), "timeout"),  # answers, but after the request timeout
    "hang": (("hang", "", 60.0), "timeout"),  # reads the request, never answers
    "trickle": (("trickle", "Verdict: acceptable", 60.0), "deadline"),  # a byte every 0.2 s: no read timeout
    "garbage": (("garbage", "<html><body>502 Bad Gateway</body></html>", 0.0), "unusable reply"),
    "no_choices": (("garbage", '{"id": "x", "object": "chat.completion"}', 0.0), "unusable reply"),
}


@dataclass(frozen=True)
class OutageOptions:
    timeout_s: float = 0.5  # per request
    retries: int = 2
    deadline_s: float = 3.0  # per row, retries included
    backoff_s: float = 0.05
    concurrency: int = 4
    slack_s: float = 1.5  # thread start-up and bookkeeping on a loaded machine


@dataclass
class OutageResult:
    outage: str
    rows: int
    unjudged: int
    reason_ok: int  # unjudged rows whose reason names the failure
    requests: int
    max_requests_per_row: int
    wall_s: float
    bound_s: float  # what the deadline allows for all rows at this concurrency
    reasons: list[str] = field(default_factory=list)


@dataclass
class OutageReport:
    results: list[OutageResult]
    rerun_rows: int
    rerun_judged: int
    left_after_rerun: int
    problems: list[str]
    left_reasons: list[str] = field(default_factory=list)  # why rows stayed unjudged after the rerun


def make_judge(url: str, options: OutageOptions, cache_dir: Path):
    from blsp_demo.judge import Judge, OpenAIBackend, ReplyCache

    backend = OpenAIBackend("fake-judge", url, api_key="sk-fake-judge-key", timeout_s=options.timeout_s,
                            max_retries=options.retries, backoff_s=options.backoff_s, max_backoff_s=0.2,
                            deadline_s=options.deadline_s)
    return Judge(backend, ReplyCache(cache_dir), concurrency=options.concurrency)


def pending(data_dir: Path, judge) -> list[dict]:
    from blsp_demo.judge import PROMPT_VERSION
    from blsp_demo.app.store import read_records
    from evaluations.judge_logs import turns_to_judge

    return turns_to_judge(read_records(data_dir).records, judge.model, PROMPT_VERSION, rejudge=False)


def run_outages(data_dir: Path, workdir: Path, options: OutageOptions = OutageOptions(),
                outages: tuple[str, ...] = tuple(OUTAGES)) -> OutageReport:
    from blsp_demo.app.store import Store
    from evaluations.judge_logs import judge_turns

    server = FakeOpenAI()
    store = Store(data_dir)
    results, problems = [], []
    try:
        judge = make_judge(server.url, options, Path(workdir) / "judge-cache")
        for name in outages:
            reply, phrase = OUTAGES[name]
            server.outage, n_before = reply, len(server.requests)
            todo = pending(data_dir, judge)
            t0 = time.perf_counter()
            written = judge_turns(store, judge, todo)
            wall = time.perf_counter() - t0
            result = outage_result(name, written, phrase, server.requests[n_before:], wall, options)
            problems += check_outage(result, options)
            results.append(result)
        server.outage = None
        todo = pending(data_dir, judge)
        rerun = judge_turns(store, judge, todo)
        judged = sum(r["verdict"] in ("accept", "reject") for r in rerun)
        left = len(pending(data_dir, judge))
        left_reasons = sorted({r["reason"] for r in rerun if r["verdict"] == "unjudged"})
        if judged != len(todo) or left:
            problems.append(f"the rerun judged {judged} of {len(todo)} rows; {left} left: {left_reasons}")
    finally:
        store.close()
        server.close()
    return OutageReport(results, len(todo), judged, left, problems, left_reasons)


def outage_result(name: str, written: list[dict], phrase: str, requests: list[dict], wall: float,
                  options: OutageOptions) -> OutageResult:
    unjudged = [r for r in written if r["verdict"] == "unjudged"]
    waves = math.ceil(len(written) / max(1, options.concurrency))
    return OutageResult(name, len(written), len(unjudged), sum(phrase in r["reason"] for r in unjudged),
                        len(requests), max_requests_per_row(requests), round(wall, 2),
                        round(waves * options.deadline_s + options.slack_s, 2),
                        sorted({r["reason"] for r in unjudged}))


def max_requests_per_row(requests: list[dict]) -> int:
    """Requests of the row asked most often (rows have distinct question and answer, so a row's
    prompt is its own)."""
    counts = Counter(body["messages"][-1]["content"] for body in requests)
    return max(counts.values(), default=0)


def check_outage(r: OutageResult, options: OutageOptions) -> list[str]:
    problems = []
    if r.rows == 0:
        problems.append(f"{r.outage}: no rows to judge")
    if r.unjudged != r.rows:
        problems.append(f"{r.outage}: {r.rows - r.unjudged} of {r.rows} rows got a verdict from a failing server")
    if r.reason_ok != r.unjudged:
        problems.append(f"{r.outage}: reasons do not name the failure: {r.reasons}")
    if r.wall_s > r.bound_s:
        problems.append(f"{r.outage}: took {r.wall_s} s, more than the deadline allows ({r.bound_s} s)")
    if r.max_requests_per_row > 1 + options.retries:
        problems.append(f"{r.outage}: a row was sent {r.max_requests_per_row} times: retries not bounded")
    return problems


# ---- text aimed at the judge ------------------------------------------------------------------------
@dataclass
class InjectionCheck:
    turn_id: str
    question: str
    verdict: str
    flags: list[str]
    reached_judge: bool  # the injected sentence was in a prompt sent to the judge server

    @property
    def ok(self) -> bool:
        return "injection" in self.flags and not self.reached_judge


def judge_injections(data_dir: Path, turn_ids: list[str], workdir: Path) -> list[InjectionCheck]:
    """Judge the logged turns `turn_ids` with a gullible fake judge; report what reached it."""
    from blsp_demo.app.store import Store, question_of, read_records
    from evaluations.judge_logs import judge_turns

    server = FakeOpenAI()
    store = Store(data_dir)
    try:
        judge = make_judge(server.url, OutageOptions(), Path(workdir) / "injection-cache")
        turns = [r for r in read_records(data_dir).records if r["id"] in set(turn_ids) and r["kind"] == "turn"]
        written = judge_turns(store, judge, turns)
        untrusted = [untrusted_parts(body["messages"][-1]["content"]) for body in server.requests]
    finally:
        store.close()
        server.close()
    reached = any(redact_injection(part)[1] for part in untrusted)  # a sentence to the judge got through
    return [InjectionCheck(t["id"], question_of(t), j["verdict"], j["flags"], reached)
            for t, j in zip(turns, written)]


_QUOTED = re.compile(r"<(question|answer)>\n(.*?)\n</\1>", re.DOTALL)


def untrusted_parts(prompt: str) -> str:
    """What the judge prompt quotes from the log: the text inside <question> and <answer>."""
    return "\n".join(text for _, text in _QUOTED.findall(prompt))
