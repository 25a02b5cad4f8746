"""SIGKILL the server in the middle of the load, restart it on the same data dir, count what survived.

`run_crash(server, options, folder)`: the load of `load.py` runs until `kill_after_labels` labels
were acknowledged, then the server's process group gets SIGKILL (answers still streaming, labels
still arriving). A write cut short by a crash leaves a torn last line; SIGKILL between two whole
writes leaves none, so the scenario then appends the start of a record to the dead writer's file,
as a kill in the middle of `write` would. Before the restart the reader must skip and report it;
the restarted server must move it to `recovered/`. After the restart:
- every turn and label a client was told about is in the records, exactly once, on the right turn;
- no record id appears twice; every file is valid JSONL (no bad line; pandas reads it);
- the server answers a new session (a turn and its label).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .load import LoadOptions, SessionRun, pandas_reads, plan, run_sessions
from .server import AppServer, close_soon

TORN = b'{"kind": "label", "id": "torn-by-the-crash-scenario", "ts": "2026-01-01T00:00:00+00:00", "sess'


@dataclass(frozen=True)
class CrashOptions:
    load: LoadOptions = LoadOptions()
    kill_after_labels: int = 20  # acknowledged labels before the SIGKILL
    timeout_s: float = 900.0


@dataclass
class CrashReport:
    sessions: int
    turns_acked: int
    labels_acked: int
    turns_found: int  # acknowledged turns found once in the records after the restart
    labels_found: int
    written_not_acked: int  # turn and label records of the crashed run no client heard about
    missing: list[str]
    duplicated: list[str]
    torn_reported_before_restart: bool
    recovered_fragments: int
    bad_lines_after_restart: int
    pandas_ok: bool
    answers_after_restart: bool
    seconds_to_kill: float
    restart_s: float
    problems: list[str] = field(default_factory=list)


def acked(runs: list[SessionRun]) -> tuple[list[str], list[tuple[str, str]]]:
    turns = [s.turn_id for r in runs for s in r.samples if s.turn_id]
    labels = [label for r in runs for label in r.labels_acked]
    return turns, labels


def tear_last_line(data_dir: Path) -> Path:
    """Append half a record, without its newline, to the newest records file (the dead writer's)."""
    newest = max((Path(data_dir) / "records").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    with open(newest, "ab") as f:
        f.write(TORN)
    return newest


def kill_mid_load(server: AppServer, runs: list[SessionRun], options: CrashOptions) -> float:
    stop = threading.Event()
    loader = threading.Thread(target=run_sessions, args=(server.url, runs, options.load, stop), daemon=True)
    t0 = time.perf_counter()
    loader.start()
    while sum(len(r.labels_acked) for r in runs) < options.kill_after_labels and loader.is_alive():
        if time.perf_counter() - t0 > options.timeout_s:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    server.kill()  # answers still streaming, labels arriving
    stop.set()
    loader.join(timeout=300)
    return seconds


def run_crash(server: AppServer, options: CrashOptions, folder: Path) -> CrashReport:
    from blsp_demo.app.store import RECOVERED_DIR, read_records, records_files

    runs = plan(options.load, Path(folder))
    seconds = kill_mid_load(server, runs, options)
    tear_last_line(server.data_dir)
    torn_seen = any(b.torn for b in read_records(server.data_dir).bad_lines)
    t0 = time.perf_counter()
    server.restart()
    restart_s = time.perf_counter() - t0
    result = read_records(server.data_dir)
    turns, labels = acked(runs)
    report = compare(result.records, turns, labels)
    report.update(sessions=len(runs), torn_reported_before_restart=torn_seen, seconds_to_kill=round(seconds, 1),
                  recovered_fragments=len(list((server.data_dir / RECOVERED_DIR).glob("*"))),
                  bad_lines_after_restart=len(result.bad_lines), pandas_ok=pandas_reads(records_files(server.data_dir)),
                  answers_after_restart=answers(server.url), restart_s=round(restart_s, 1))
    out = CrashReport(**report)
    out.problems = crash_problems(out)
    return out


def compare(records: list[dict], turns: list[str], labels: list[tuple[str, str]]) -> dict:
    ids = Counter(r["id"] for r in records)
    by_reason = Counter(r.get("reason") for r in records if r["kind"] == "label")
    label_turn = {r.get("reason"): r.get("turn_id") for r in records if r["kind"] == "label"}
    missing = [f"turn {t}" for t in turns if ids[t] == 0]
    missing += [f"label {reason}" for reason, _ in labels if by_reason[reason] == 0]
    duplicated = [i for i, n in ids.items() if n > 1] + [f"label {reason}" for reason, _ in labels
                                                         if by_reason[reason] > 1]
    wrong = [f"label {reason} on another turn" for reason, turn in labels if label_turn.get(reason) not in (None, turn)]
    by_id = {r["id"]: r for r in records}
    sessions = {by_id[t]["session"] for t in turns if t in by_id}
    told = set(turns) | {reason for reason, _ in labels}
    not_acked = [r for r in records if r.get("session") in sessions and r["kind"] in ("turn", "label")
                 and (r["id"] if r["kind"] == "turn" else r.get("reason")) not in told]
    return dict(turns_acked=len(turns), labels_acked=len(labels), turns_found=sum(ids[t] == 1 for t in turns),
                labels_found=sum(by_reason[reason] == 1 for reason, _ in labels),
                written_not_acked=len(not_acked), missing=missing + wrong, duplicated=duplicated)


def answers(url: str) -> bool:
    from gradio_client import Client

    client = Client(url, verbose=False)
    try:
        details = client.predict("Are you back?", api_name="/chat_text")[1]
        status = client.predict(details["message_index"], "accept", "after the restart", api_name="/feedback")
        return bool(details["response"].strip()) and "Saved" in status
    except Exception:  # noqa: BLE001 - reported as not answering
        return False
    finally:
        close_soon(client)


def crash_problems(r: CrashReport) -> list[str]:
    out = [f"lost: {m}" for m in r.missing] + [f"duplicated: {d}" for d in r.duplicated]
    if r.labels_acked < 1 or r.turns_acked < 1:
        out.append("nothing was acknowledged before the kill")
    if not r.torn_reported_before_restart:
        out.append("the reader did not report the torn last line")
    if r.recovered_fragments < 1 or r.bad_lines_after_restart:
        out.append(f"the restart did not recover the torn line ({r.bad_lines_after_restart} bad lines left)")
    if not r.pandas_ok:
        out.append("pandas cannot read the records after the restart")
    if not r.answers_after_restart:
        out.append("the restarted server does not answer")
    return out
