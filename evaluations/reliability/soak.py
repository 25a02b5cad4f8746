"""A long soak with the server's RSS over time, and reset / deletion races under a streaming answer
(issue 20), against the real app. RSS is read from /proc/<pid>/status (VmRSS) every `every_s`."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .queue import fn_index, inputs_for, join, queue_call
from .round2 import fresh_hash, turn


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """(seconds, MB, phase) every `every_s` in a thread of its own."""

    def __init__(self, pid: int, every_s: float = 2.0):
        self.pid, self.every_s, self.phase = pid, every_s, "start"
        self.samples: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            mb = rss_mb(self.pid)
            if mb is not None:
                self.samples.append((round(time.monotonic() - self._t0, 1), round(mb, 1), self.phase))
            self._stop.wait(self.every_s)

    def mark(self) -> float:
        return rss_mb(self.pid) or 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class SoakResult:
    turns: int
    abandoned_sessions: int
    ttl_s: float
    rss_mb: dict[str, float]  # phase end -> MB
    reply_bytes: list[int]  # the reply's size at each turn of the long conversation
    failed: int
    samples: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def run_soak(server, ttl_s: float, turns: int = 34, abandoned: int = 50, idle_s: float | None = None,
             plot: Path | None = None) -> SoakResult:
    """One conversation of `turns` turns, then `abandoned` sessions of one turn each left open,
    then idle for the session time-to-live and a minute more."""
    config = httpx.get(server.url.rstrip("/") + "/config", timeout=30).json()
    sampler, marks, sizes, failed = Sampler(server.proc.pid), {}, [], 0
    marks["start"] = sampler.mark()
    sampler.phase, session = "long conversation", fresh_hash()
    for i in range(turns):
        done = turn(server.url, config, f"Turn {i}: name a colour and a number.", session)
        failed += not done.get("success")
        sizes.append(len(json.dumps((done.get("output") or {}).get("data"), ensure_ascii=False).encode()))
    marks["after the long conversation"] = sampler.mark()
    sampler.phase = "abandoned sessions"
    for i in range(abandoned):
        failed += not turn(server.url, config, f"Question {i}: what is {i} plus one?").get("success")
    marks["after the abandoned sessions"] = sampler.mark()
    sampler.phase = "idle"
    time.sleep(idle_s if idle_s is not None else ttl_s + 60)
    marks["idle, past the time-to-live"] = sampler.mark()
    sampler.stop()
    r = SoakResult(turns, abandoned, ttl_s, {k: round(v, 1) for k, v in marks.items()}, sizes, failed,
                   sampler.samples)
    if failed:
        r.problems.append(f"{failed} turns failed")
    if plot is not None:
        plot_rss(r, plot)
    return r


def plot_rss(r: SoakResult, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for phase in dict.fromkeys(p for _, _, p in r.samples):
        pts = [(t, mb) for t, mb, p in r.samples if p == phase]
        ax.plot([t for t, _ in pts], [mb for _, mb in pts], ".-", ms=3, label=phase)
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title(f"Soak: {r.turns}-turn conversation, {r.abandoned_sessions} abandoned sessions, TTL {r.ttl_s:.0f} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ---- a reset or a deletion while an answer streams ------------------------------------------------
@dataclass
class RaceResult:
    action: str  # reset | delete
    hit: bool  # the action landed while the answer was streaming (a `superseded` record shows it)
    after: str  # what was found after it
    problems: list[str] = field(default_factory=list)


def run_race(server, action: str, wait_s: float = 0.8) -> RaceResult:
    from blsp_demo.app.store import read_records

    url, config, session = server.url, httpx.get(server.url.rstrip("/") + "/config", timeout=30).json(), fresh_hash()
    word = f"banana{session[:6]}"  # finds this race's records (their `session` is the app's, not the hash)
    first = turn(url, config, f"Remember the word {word}.", session)
    chat = fn_index(config, api_name="chat_text")
    join(url, session, chat, inputs_for(config, chat, ["Tell me a long story about a dragon and a king."]))
    time.sleep(wait_s)  # the answer is streaming
    fn = fn_index(config, api_name="reset") if action == "reset" else fn_index(config, elem_id="delete")
    queue_call(url, session, fn, inputs_for(config, fn, []))
    time.sleep(3)  # the old answer would have written its state back by now
    every = read_records(server.data_dir).records
    mine = next((x["session"] for x in every if word in (x.get("text") or "")), None)
    records = [r for r in every if mine and r.get("session") == mine]
    hit = any(r.get("error_code") == "superseded" for r in records) or (
        action == "delete" and not any(r["kind"] == "turn" and r.get("text", "").startswith("Tell") for r in records))
    r = RaceResult(action, hit, "", [])
    if action == "reset":
        follow = turn(url, config, "What word did I ask you to remember?", session)
        turns = [x for x in read_records(server.data_dir).records if x.get("session") == mine and x["kind"] == "turn"]
        last = turns[-1] if turns else {}
        r.after = f"next turn: turn_index {last.get('turn_index')}, cached {last.get('cached_tokens')}, ok {follow.get('success')}"
        if last.get("conversation") == records[0].get("conversation"):
            r.problems.append(f"the next turn still carries the old context ({r.after})")
    else:
        deletion = next((x for x in every if x["kind"] == "deletion" and x.get("deleted_session") == mine), None)
        late = [x["kind"] for x in records if deletion and x.get("ts", "") > deletion.get("ts", "")]
        r.after = f"deletion logged: {deletion is not None}; records of the session after it: {late}"
        if deletion is None or late:
            r.problems.append(r.after)
    if not first.get("success"):
        r.problems.append("the first turn failed")
    return r
