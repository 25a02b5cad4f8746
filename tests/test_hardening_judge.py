"""The judge when its OpenAI-compatible server fails (a fake one on loopback: the only stand-in,
at the judge-API boundary): 429, 500, timeouts, hangs, a reply trickling in, garbage. Bounded
retries, no row past the deadline, rows written `unjudged` with the reason, a rerun finishes them."""

from __future__ import annotations

import time

import pytest

from blsp_demo import judge as J
from blsp_demo.app.store import Store, read_records
from evaluations import judge_logs
from evaluations.reliability.fake_openai import FakeOpenAI
from evaluations.reliability.judge_outage import OUTAGES, OutageOptions, run_outages

Q = "What is the capital of France?"


def logged_turns(data_dir, n: int) -> list[dict]:
    store = Store(data_dir)
    turns = [store.append("turn", f"s{i % 3}", modality="text", text=f"{Q} ({i})", model="micro-cascade",
                          response="Paris." if i % 2 else "London.", error=None) for i in range(n)]
    store.close()
    return turns


def test_every_outage_leaves_rows_unjudged_with_the_reason_and_a_rerun_finishes_them(tmp_path):
    logged_turns(tmp_path / "data", 4)
    report = run_outages(tmp_path / "data", tmp_path, OutageOptions())
    for r in report.results:
        print(f"\n{r.outage}: {r.unjudged}/{r.rows} unjudged in {r.wall_s} s (bound {r.bound_s} s), "
              f"{r.requests} requests, at most {r.max_requests_per_row} per row: {r.reasons}")
    assert [r.outage for r in report.results] == list(OUTAGES)
    assert not report.problems, report.problems
    assert report.rerun_rows == report.rerun_judged == 4 and report.left_after_rerun == 0
    judgements = [r for r in read_records(tmp_path / "data").records if r["kind"] == "judgement"]
    assert len(judgements) == 4 * (len(OUTAGES) + 1)  # one unjudged per outage per row, then the verdicts


@pytest.mark.parametrize("outage", ["hang", "trickle"])
def test_a_single_row_never_outlasts_the_deadline(outage, tmp_path):
    server = FakeOpenAI()
    try:
        server.outage = OUTAGES[outage][0]
        backend = J.OpenAIBackend("fake", server.url, api_key="k", timeout_s=0.4, max_retries=5, backoff_s=0.01,
                                  deadline_s=1.5)
        t0 = time.perf_counter()
        out = J.Judge(backend, J.ReplyCache(None)).judge(Q, "Paris.")
        took = time.perf_counter() - t0
    finally:
        server.close()
    assert out.verdict == "unjudged" and took < 1.5 + 0.5, (out, took)
    assert "deadline" in out.reason or "timeout" in out.reason


def test_the_command_takes_the_limits_and_a_rerun_judges_what_is_left(tmp_path, monkeypatch, capsys):
    turns = logged_turns(tmp_path / "data", 3)
    server = FakeOpenAI()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    monkeypatch.setenv("JUDGE_MODEL", "fake-judge")
    args = ["--data-dir", str(tmp_path / "data"), "--judge-cache", str(tmp_path / "cache"), "--timeout", "0.3",
            "--retries", "1", "--deadline", "2"]
    try:
        server.outage = OUTAGES["trickle"][0]
        t0 = time.perf_counter()
        judge_logs.main(args)
        took = time.perf_counter() - t0
        server.outage = None
        judge_logs.main(args)
    finally:
        server.close()
    records = read_records(tmp_path / "data").records
    first, second = ([r for r in records if r["kind"] == "judgement"][i * 3:(i + 1) * 3] for i in (0, 1))
    assert all(r["verdict"] == "unjudged" and "deadline of 2 s" in r["reason"] for r in first)
    assert took < 2 * 2 + 2  # 3 rows, 4 at a time: one deadline, plus start-up
    assert sorted(r["turn_id"] for r in second) == sorted(t["id"] for t in turns)
    assert {r["verdict"] for r in second} == {"accept", "reject"}
    assert "judged 3 turns" in capsys.readouterr().err


@pytest.mark.parametrize("body", ["<html>502 Bad Gateway</html>", '{"choices": [', '{"foo": 1}',
                                  '{"choices": [{"message": {"content": 5}}]}', '{"choices": "x"}', ""])
def test_garbage_replies_are_retried_then_unjudged_never_raised(body):
    server = FakeOpenAI()
    try:
        server.outage = ("garbage", body, 0.0)
        backend = J.OpenAIBackend("fake", server.url, api_key="k", timeout_s=1, max_retries=1, backoff_s=0.01)
        out = J.Judge(backend, J.ReplyCache(None)).judge(Q, "Paris.")
        requests = len(server.requests)
    finally:
        server.close()
    assert out.verdict == "unjudged" and out.reason.startswith("unusable reply") and requests == 2
