"""Run every reliability scenario at full size against the real app and write REPORT.md.

    python -m evaluations.reliability [--sessions 20] [--turns 5] [--work DIR] [--out DIR]

Two `python app.py` servers on the offline default model (micro-cascade), each on a data dir of
its own under --work (default: a temporary folder): one takes the bad inputs, the flood, the
leak probes and the load; the other is killed with SIGKILL mid-load and restarted. The judge
outages run on a copy of answered turns from the load. Results go to --out (default
evaluations/reliability): REPORT.md and results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from . import flood, inputs, leaks, load, origin, round2, soak
from .crash import CrashOptions, run_crash
from .judge_outage import OutageOptions, judge_injections, run_outages
from .render import CHROMIUM, run_render
from .report import render_report
from .server import AppServer, ServerOptions

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class RunOptions:
    sessions: int = 20
    turns: int = 5
    max_new_tokens: int = 16
    crash_kill_after_labels: int = 40
    judge_rows: int = 24


def log(msg: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bad_inputs(server: AppServer, work: Path) -> dict:
    cases = inputs.make_cases(work / "bad-inputs")
    ref = inputs.reference(server.url, server.data_dir)
    results = []
    for case in cases:
        results.append(inputs.run_case(server.url, server.data_dir, case, ref))
        log(f"input {case.name}: {results[-1].outcome}, ok={results[-1].ok}")
    injected = [r.turn_ids[0] for r in results if r.name in ("injection_for_judge", "injection_text") and r.turn_ids]
    checks = judge_injections(server.data_dir, injected, work / "judge")
    return {"cases": [dataclasses.asdict(r) | {"ok": r.ok} for r in results],
            "summary": inputs.summary(results), "messages": [r.shown for r in results if r.outcome == "error"],
            "injection": [dataclasses.asdict(c) | {"ok": c.ok} for c in checks]}


def limits_and_leaks(server: AppServer, messages: list[str]) -> dict:
    out = {"flood": dataclasses.asdict(flood.run_flood(server.url, server.data_dir, burst=10)),
           "per_minute": dataclasses.asdict(flood.run_per_minute(server.url, limit=20))}
    out["flood"]["problems"] = flood.FloodResult(**out["flood"]).problems
    probes = leaks.traversal_probes(server.url, server.data_dir)
    out["traversal"] = {"probes": len(probes), "leaked": [str(p) for p in probes if p.leaked],
                        "statuses": sorted({str(p.status)[:60] for p in probes}),
                        "control_served": leaks.allowed_file_served(server.url)}
    out["inert_config"] = leaks.inert_config(server.url)
    out["render"] = dataclasses.asdict(run_render(server.url)) if CHROMIUM.exists() else None
    out["messages"] = messages
    return out


def secrets(servers: list[AppServer], messages: list[str]) -> dict:
    sources: dict[str, str] = {}
    for s in servers:
        sources.update({f"{s.data_dir.name}: {k}": v
                        for k, v in leaks.secret_sources(s.url, s.data_dir, s.log_text(), messages).items()})
    return {"sources": len(sources), "found_in": leaks.find_secrets(sources)}


def copy_answered_turns(data_dir: Path, dest: Path, n: int) -> int:
    """Up to `n` answered turns with distinct question and answer (a judge request per row), none
    with text addressed to the judge (those are left unjudged on purpose: see `judge_injections`)."""
    from blsp_demo.judge import redact_injection
    from blsp_demo.app.store import Store, question_of, read_records

    distinct = {(question_of(r), r["response"]): r for r in read_records(data_dir).records
                if r["kind"] == "turn" and not r.get("error") and r.get("response")
                and not any(redact_injection(text)[1] for text in (question_of(r), r["response"]))}
    turns = list(distinct.values())[:n]
    store = Store(dest)
    for t in turns:
        store.append("turn", t["session"], **{k: v for k, v in t.items() if k not in ("kind", "id", "ts", "session")})
    store.close()
    return len(turns)


def run_all(opts: RunOptions, work: Path) -> dict:
    t0 = time.perf_counter()
    results: dict = {"options": dataclasses.asdict(opts), "machine": machine()}
    main = AppServer(ServerOptions(work / "app", max_new_tokens=opts.max_new_tokens)).start()
    try:
        log("bad inputs")
        results["inputs"] = bad_inputs(main, work)
        log("limits, traversal, rendering")
        results["limits_leaks"] = limits_and_leaks(main, results["inputs"]["messages"])
        log(f"load: {opts.sessions} sessions x {opts.turns} turns")
        t = time.perf_counter()
        runs = load.run_load(main.url, load.LoadOptions(sessions=opts.sessions, turns=opts.turns), work / "load")
        report = load.check_load(runs, main.data_dir, opts.turns)
        report.wall_s = round(time.perf_counter() - t, 1)
        results["load"] = dataclasses.asdict(report) | {"problems": report.problems}
        log("judge outages")
        rows = copy_answered_turns(main.data_dir, work / "judge-data", opts.judge_rows)
        outage = run_outages(work / "judge-data", work / "judge", OutageOptions())
        results["judge"] = dataclasses.asdict(outage) | {"rows": rows}
        log("crash")
        crash_server = AppServer(ServerOptions(work / "crash", max_new_tokens=opts.max_new_tokens)).start()
        try:
            crash = run_crash(crash_server, CrashOptions(load.LoadOptions(sessions=opts.sessions, turns=opts.turns),
                                                         kill_after_labels=opts.crash_kill_after_labels),
                              work / "crash-audio")
            results["crash"] = dataclasses.asdict(crash)
            log("secrets")
            results["secrets"] = secrets([main, crash_server], results["limits_leaks"]["messages"])
        finally:
            crash_server.stop()
    finally:
        main.stop()
    results["round2"] = run_round2(opts, work)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    return results


def run_round2(opts: RunOptions, work: Path) -> dict:
    """Issue 20's scenarios: rotating session hashes and surrogates on a server that limits by
    address (as the app does by default), and a server on a full tmpfs data dir."""
    t0 = time.perf_counter()
    env = {"BLSP_LIMIT_BY": "address", "BLSP_COMPARE_MODELS": "micro-text"}
    server = AppServer(ServerOptions(work / "round2", max_new_tokens=opts.max_new_tokens, env=env)).start()
    try:
        log("surrogates")
        out = {"surrogates": dataclasses.asdict(round2.run_surrogates(server))}
        log("rotating session hashes")
        out["rotation"] = dataclasses.asdict(round2.run_rotation(server.url))
    finally:
        server.stop()
    log("full disk")

    def start(data: Path) -> AppServer:
        return AppServer(ServerOptions(data, max_new_tokens=opts.max_new_tokens)).start()

    out["disk"] = dataclasses.asdict(round2.run_full_disk(start, work / "disk"))
    if CHROMIUM.exists():
        log("requests to other hosts from every tab")
        tracker = origin.Tracker()
        try:
            origin.plant(work / "origin", tracker.url)
            server = AppServer(ServerOptions(work / "origin", max_new_tokens=opts.max_new_tokens,
                                             env={"BLSP_COMPARE_MODELS": "micro-text"})).start()
            try:
                out["origin"] = dataclasses.asdict(origin.run_origin(server.url, tracker))
            finally:
                server.stop()
        finally:
            tracker.close()
    log("reset and deletion races, soak")
    ttl = 60.0
    # answers long enough (200 tokens) for a reset to land mid-answer; no per-minute limit (one
    # conversation of 34 turns goes faster than 20 a minute)
    env = {"BLSP_SESSION_TTL_S": str(int(ttl)), "BLSP_TURNS_PER_MINUTE": "0"}
    server = AppServer(ServerOptions(work / "soak", max_new_tokens=200, env=env)).start()
    try:
        out["races"] = [dataclasses.asdict(soak.run_race(server, a)) for a in ("reset", "delete")]
        result = soak.run_soak(server, ttl, plot=HERE / "soak-rss.png")
        out["soak"] = dataclasses.asdict(result)
    finally:
        server.stop()
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def machine() -> dict:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_average": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluations.reliability", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--work", type=Path, default=None, help="where the servers' data dirs go (default: a temp dir)")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--only", choices=["round2"], default=None,
                   help="run only these scenarios; the rest of the report comes from --out's results.json")
    a = p.parse_args(argv)
    opts = RunOptions(sessions=a.sessions, turns=a.turns, max_new_tokens=a.max_new_tokens,
                      crash_kill_after_labels=2 * a.sessions)
    with tempfile.TemporaryDirectory(prefix="blsp-reliability-") as tmp:
        if a.only:
            results = json.loads((a.out / "results.json").read_text())
            results["round2"] = run_round2(opts, a.work or Path(tmp))
            results["round2"]["machine"] = machine()
        else:
            results = run_all(opts, a.work or Path(tmp))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str) + "\n")
    (a.out / "REPORT.md").write_text(render_report(results), encoding="utf-8")
    log(f"wrote {a.out / 'REPORT.md'} in {results['wall_s']} s")


if __name__ == "__main__":
    main()
