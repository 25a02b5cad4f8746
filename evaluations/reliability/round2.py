"""Round-2 hardening scenarios against the real app (issue 20): what a client that picks its own
session hashes can get admitted, lone surrogates sent everywhere a person types, and a data dir on a
full filesystem. Each returns a dataclass of figures with its `problems`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .queue import fn_index, inputs_for, queue_call

BAD = "x \ud800 y"  # a lone surrogate: not encodable as UTF-8
QUESTION = "What is the capital of France?"
FILTERS = ["all", "all", "all", "", ""]  # model, modality, label, from, to


def fresh_hash() -> str:
    return uuid.uuid4().hex[:11]


def turn(url: str, config: dict, text: str, session: str | None = None) -> dict:
    """One typed turn in a session (a new hash unless given): the completed message."""
    fn = fn_index(config, api_name="chat_text")
    return queue_call(url, session or fresh_hash(), fn, inputs_for(config, fn, [text]))


# ---- rotating session hashes --------------------------------------------------------------------
@dataclass
class RotationResult:
    parallel: int
    parallel_admitted: int
    at_once_limit: int
    sequential: int
    admitted_times: list[float]
    per_minute_limit: int
    max_in_a_minute: int = 0
    refusal: str = ""
    problems: list[str] = field(default_factory=list)


def run_rotation(url: str, parallel: int = 7, sequential: int = 28, at_once: int = 1, per_minute: int = 20) -> RotationResult:
    """Every turn from a new session hash (what a client that rotates them does): `parallel` at once,
    then `sequential` one after another. The limits key on the address, so hashes must not help."""
    config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
    outcomes: list[dict] = [None] * parallel
    start = threading.Barrier(parallel)

    def one(i: int) -> None:
        start.wait()
        outcomes[i] = turn(url, config, f"{QUESTION} ({i})")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(parallel)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    admitted_at_once = sum(bool(o and o.get("success")) for o in outcomes)
    refusal = next((str(o["output"].get("error")) for o in outcomes if o and not o.get("success")), "")
    t0, times = time.monotonic(), []
    for i in range(sequential):
        done = turn(url, config, f"{QUESTION} [{i}]")
        if done.get("success"):
            times.append(round(time.monotonic() - t0, 2))
        else:
            refusal = refusal or str(done["output"].get("error"))
    r = RotationResult(parallel, admitted_at_once, at_once, sequential, times, per_minute, refusal=refusal)
    r.max_in_a_minute = admitted_at_once + sum(1 for u in times if u < 60)  # the parallel ones came first
    if admitted_at_once > at_once:
        r.problems.append(f"{admitted_at_once} of {parallel} parallel turns admitted (limit {at_once} at once)")
    if r.max_in_a_minute > per_minute:
        r.problems.append(f"{r.max_in_a_minute} turns admitted within a minute (limit {per_minute})")
    return r


# ---- lone surrogates everywhere ------------------------------------------------------------------
@dataclass
class SurrogateResult:
    sent: dict[str, str]  # where -> "saved" or the message shown
    views: dict[str, str]  # view -> "ok" or what failed, before the restart
    views_after_restart: dict[str, str]
    bad_bytes_on_disk: int
    problems: list[str] = field(default_factory=list)


def utf8_ok(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _outcome(done: dict) -> str:
    return "saved" if done.get("success") else " ".join(str(done["output"].get("error")).split())[:160]


def send_surrogates(url: str, data_dir: Path) -> dict[str, str]:
    """A question, a chat label reason, an Annotate label reason and a vote reason holding one."""
    from blsp_demo.app.store import read_records

    config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
    session = fresh_hash()

    def call(api: str, args: list) -> dict:
        fn = fn_index(config, api_name=api)
        return queue_call(url, session, fn, inputs_for(config, fn, args))

    sent = {"question": _outcome(call("chat_text", [f"{QUESTION} {BAD}"]))}
    sent["chat label reason"] = _outcome(call("feedback", [1, "reject", f"wrong {BAD}"]))
    turn_id = next((r["id"] for r in read_records(data_dir).records if r["kind"] == "turn"), "")
    sent["annotate label reason"] = _outcome(call("label", [turn_id, "accept", f"fine {BAD}"]))
    if any(d.get("api_name") == "compare" for d in config["dependencies"]):
        call("compare", [f"{QUESTION} {BAD}"])
        sent["vote reason"] = _outcome(call("vote", ["A", f"better {BAD}"]))
    return sent


def check_views(url: str) -> dict[str, str]:
    """What a new visitor's Annotate table, export and Dashboard give: 'ok' when the event succeeds
    and its output is valid UTF-8."""
    config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
    session, out = fresh_hash(), {}
    for name, elem, args in (("annotate table", "table_refresh", FILTERS), ("export", "export", ["csv", *FILTERS]),
                             ("dashboard", "dash_refresh", [])):
        fn = fn_index(config, elem_id=elem)
        done = queue_call(url, session, fn, inputs_for(config, fn, args))
        data = (done.get("output") or {}).get("data")
        out[name] = ("ok" if done.get("success") and utf8_ok(data)
                     else f"failed: {_outcome(done) if not done.get('success') else 'output not UTF-8'}")
    return out


def run_surrogates(server) -> SurrogateResult:
    sent = send_surrogates(server.url, server.data_dir)
    before = check_views(server.url)
    server.restart()
    after = check_views(server.url)
    raws = [p.read_bytes() for p in server.data_dir.glob("records/*.jsonl")]
    bad = sum(raw.count(b"\\ud800") + raw.count(b"\xed\xa0\x80") for raw in raws)
    r = SurrogateResult(sent, before, after, bad)
    r.problems = [f"{k}: {v}" for k, v in {**before, **{f"{k} after restart": v for k, v in after.items()}}.items()
                  if v != "ok"]
    if bad:
        r.problems.append(f"{bad} lone surrogates written to the records")
    return r


# ---- a full filesystem ---------------------------------------------------------------------------
@dataclass
class DiskResult:
    ran: bool
    why_not: str = ""
    refused: list[str] = field(default_factory=list)  # what people were told while the disk was full
    whole_lines: bool = False
    pandas_ok: bool = False
    texts_on_disk: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m"):
    """A small tmpfs at `path` (root only): yields None when it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if os.geteuid() != 0 or done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` up to its last few bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for block in (4096, 64, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
    return filler


def run_full_disk(start_server, folder: Path, attempts: int = 5) -> DiskResult:
    """A server on a 1 MB tmpfs data dir: a turn, the disk filled, `attempts` long turns, space
    freed, one more turn. `start_server(data_dir)` returns a started AppServer."""
    import pandas as pd

    with tmpfs(folder / "full") as data:
        if data is None:
            return DiskResult(False, "a tmpfs cannot be mounted here (needs root)")
        server = start_server(data)
        try:
            config = httpx.get(server.url.rstrip("/") + "/config", timeout=30).json()
            session = fresh_hash()
            turn(server.url, config, "Hello", session)
            filler = fill(data)
            refused = [_outcome(turn(server.url, config, f"{QUESTION} " * 300, session)) for _ in range(attempts)]
            filler.unlink()
            turn(server.url, config, "And of Germany?", session)
        finally:
            server.stop()
        raw = b"".join(p.read_bytes() for p in sorted(data.glob("records/*.jsonl")))
        r = DiskResult(True, refused=refused, whole_lines=raw.endswith(b"\n") and _all_json(raw))
        with contextlib.suppress(ValueError):
            frames = [pd.read_json(p, lines=True) for p in sorted(data.glob("records/*.jsonl"))]
            r.pandas_ok = True
            r.texts_on_disk = [str(t)[:40] for f in frames if "text" in f for t in f["text"].dropna()]
    r.problems = [f"a full disk was shown as: {m}" for m in refused if "Nothing was saved" not in m or "Errno" in m]
    if not r.whole_lines or not r.pandas_ok:
        r.problems.append("the records hold a partial line (pandas cannot read them)")
    if r.texts_on_disk != ["Hello", "And of Germany?"]:
        r.problems.append(f"turns on disk: {r.texts_on_disk} (a failed turn written later?)")
    return r


def _all_json(raw: bytes) -> bool:
    try:
        return all(json.loads(line) for line in raw.splitlines() if line.strip())
    except ValueError:
        return False
