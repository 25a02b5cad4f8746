"""Annotation by a team (issue 17): annotator names and roles, one label per (answer, annotator)
with a consensus, the labelling queue, agreement (kappa, alpha, bootstrap), the judge run from
the app against a local OpenAI-compatible server, and old data dirs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from judge_double import JudgeDouble

from blsp_demo.analysis.agreement import ALPHA, KAPPA, agreement_table, bootstrap, human_human, krippendorff_alpha
from blsp_demo.analysis.metrics import cohen_kappa
from blsp_demo.app.identity import NotAllowed, Roles, clean_name, who
from blsp_demo.app.judging import NOT_CONFIGURED, JudgeRunner, unjudged_turns
from blsp_demo.app.labelling import (QueueState, after_label, after_skip, agreement, consensus, guidelines_text,
                                     per_answer, queue_view, team_frame, undo_target)
from blsp_demo.app.records import TurnRecord
from blsp_demo.app.store import Store, read_records

OLD_DATA_DIR = Path(__file__).parent / "data" / "datadir-v1"


def log_answers(store: Store, n: int, model="m1", modality="text") -> list[str]:
    ids = []
    for i in range(n):
        rec = store.write(TurnRecord(session="s-user", conversation=f"c{i}", turn_index=0, modality=modality,
                                     text=f"question {i}", model=model, response=f"answer {i}"))
        ids.append(rec["id"])
        time.sleep(0.001)  # distinct timestamps: the queue goes oldest first
    return ids


# ---- identity ----------------------------------------------------------------------------------
def test_names_and_roles():
    assert clean_name("  Ada   Lovelace ") == "Ada Lovelace"
    for bad in ("", "   ", "x" * 65, "<script>"):
        with pytest.raises(ValueError):
            clean_name(bad)
    open_ = Roles()
    assert not open_.private and open_.admits("") and open_.sign_in("bob") == "bob"
    team = Roles(allowed=("alice", "bob"), passcode="s3cret")
    assert team.private and not team.admits("") and team.admits("alice")
    assert team.sign_in("Alice", "s3cret") == "Alice"
    with pytest.raises(NotAllowed, match="not on this Space's list"):
        team.sign_in("mallory", "s3cret")
    with pytest.raises(NotAllowed, match="Wrong passcode"):
        team.sign_in("bob", "guess")
    assert team.sign_in("bob", "", oauth=True) == "bob"  # the Hub login needs no passcode
    assert who({"annotator": "bob", "session": "abc"}) == "bob"
    assert who({"session": "0123456789"}) == "anonymous:01234567"


def test_roles_from_env(monkeypatch):
    monkeypatch.setenv("BLSP_ANNOTATORS", " Alice, bob ,")
    monkeypatch.setenv("BLSP_ANNOTATE_PASSCODE", "pc")
    assert Roles.from_env() == Roles(("alice", "bob"), "pc")


# ---- labels by a team ------------------------------------------------------------------------------
def test_one_row_per_answer_and_annotator_with_consensus(tmp_path):
    store = Store(tmp_path)
    a, b, c = log_answers(store, 3)
    store.label("s1", a, "accept", annotator="alice")
    store.label("s2", a, "reject", "wrong city", annotator="bob")
    store.label("s1", a, "reject", "changed my mind", annotator="alice")  # alice's latest counts
    store.label("s1", b, "accept", annotator="alice")
    store.label("s2", b, "accept", annotator="bob")
    store.label("s3", b, "reject")  # anonymous session
    store.label("s2", c, "accept", annotator="bob")
    store.label("s2", c, "unset", annotator="bob")  # retracted
    team = team_frame(read_records(tmp_path).records)
    rows = {(t, n): (lab, reason) for t, n, lab, reason in
            zip(team["turn_id"], team["annotator"], team["label"], team["label_reason"])}
    assert rows[(a, "alice")] == ("reject", "changed my mind") and rows[(a, "bob")] == ("reject", "wrong city")
    assert rows[(b, "anonymous:s3")] == ("reject", "") and (c, "") in rows and len(team) == 6
    kinds = team.drop_duplicates("turn_id").set_index("turn_id")
    assert tuple(kinds.loc[a, ["consensus", "consensus_kind", "n_labels"]]) == ("reject", "unanimous", 2)
    assert tuple(kinds.loc[b, ["consensus", "consensus_kind", "n_labels"]]) == ("accept", "majority", 3)
    assert kinds.loc[c, "consensus_kind"] == "none" and kinds.loc[c, "n_labels"] == 0
    answers = per_answer(team).set_index("turn_id")
    assert answers.loc[a, "label"] == "reject" and answers.loc[b, "label"] == "accept"
    assert consensus(["accept", "reject"]) == ("tie", "tie") and consensus(["accept"]) == ("accept", "single")


def test_old_data_dir_still_loads():
    """Labels written before annotators existed count for their anonymous session."""
    records = read_records(OLD_DATA_DIR).records
    team = team_frame(records)
    labelled = team[team["label"].notna()]
    assert sorted(zip(labelled["label"], labelled["label_reason"])) == [("accept", "right"), ("reject", "too long")]
    assert set(labelled["annotator"]) == {"anonymous:s-alice"} and set(labelled["consensus_kind"]) == {"single"}
    assert team["turn_id"].nunique() == len(team.drop_duplicates("turn_id"))
    assert isinstance(agreement(team, n_resamples=50), pd.DataFrame)


# ---- the queue ---------------------------------------------------------------------------------------
def test_queue_oldest_first_skip_undo_and_overlap(tmp_path):
    store = Store(tmp_path)
    ids = log_answers(store, 4)

    def view(me, q=QueueState(), overlap=0):
        return queue_view(team_frame(read_records(tmp_path).records), me, q, overlap)

    q = QueueState()
    v = view("alice", q)
    assert v.turn_id == ids[0] and v.progress == "0 of 4"
    store.label("s", ids[0], "accept", annotator="alice")
    q = after_label(q, ids[0])
    assert view("alice", q).turn_id == ids[1] and view("alice", q).progress == "1 of 4"
    q = after_skip(q, ids[1])
    v = view("alice", q)
    assert v.turn_id == ids[2] and v.skipped == 1
    turn, q = undo_target(q)
    assert turn == ids[0] and q.current == ids[0] and q.labelled == ()
    assert undo_target(q) == (None, q)
    # overlap 1: an answer someone else labelled is not shown to bob, and not counted for him
    assert view("bob", overlap=1).turn_id == ids[1] and view("bob", overlap=1).progress == "0 of 3"
    assert view("bob", overlap=2).progress == "0 of 4"


def test_guidelines_default_and_host_file(tmp_path, monkeypatch):
    assert "Accept" in guidelines_text() and "BLSP_GUIDELINES" in guidelines_text()
    mine = tmp_path / "g.md"
    mine.write_text("# Our rules\nBe kind.", encoding="utf-8")
    monkeypatch.setenv("BLSP_GUIDELINES", str(mine))
    assert guidelines_text() == "# Our rules\nBe kind."
    monkeypatch.setenv("BLSP_GUIDELINES", str(tmp_path / "missing.md"))
    assert "Could not read the guidelines file" in guidelines_text() and "Accept" in guidelines_text()


# ---- agreement ---------------------------------------------------------------------------------------
def reference_alpha(matrix: np.ndarray) -> float:
    """Nominal alpha from its definition (coincidence matrix), independent of the library."""
    values = sorted(set(matrix[~np.isnan(matrix)]))
    o = np.zeros((len(values), len(values)))
    for column in matrix.T:
        got = [values.index(v) for v in column[~np.isnan(column)]]
        if len(got) < 2:
            continue
        for i, x in enumerate(got):
            for j, y in enumerate(got):
                if i != j:
                    o[x, y] += 1 / (len(got) - 1)
    n_c, n = o.sum(axis=1), o.sum()
    d_o = o.sum() - np.trace(o)
    d_e = (n * n - (n_c ** 2).sum()) / (n - 1)
    return float(1 - d_o / d_e)


def test_krippendorff_alpha_and_kappa():
    nan = np.nan
    m = np.array([[1, 1, 0, 0, 1, nan, 1, 0], [1, 0, 0, 0, 1, 1, nan, 0], [1, 1, 0, nan, 0, 1, 1, 0]])
    assert math.isclose(krippendorff_alpha(m), reference_alpha(m), rel_tol=1e-9)
    assert human_human(m)[0] == ALPHA and human_human(m)[1] == 8
    # Krippendorff (2011), "Computing Krippendorff's alpha", nominal example: 0.743 (the pinned library)
    import krippendorff

    paper = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
                      [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]])
    assert round(krippendorff.alpha(reliability_data=paper, level_of_measurement="nominal"), 3) == 0.743
    assert math.isnan(krippendorff_alpha(np.array([[1.0, 1.0], [1.0, 1.0]])))  # one value: undefined
    two = m[:2]
    method, n, value = human_human(two)
    both = ~np.isnan(two).any(axis=0)
    words = np.where(two[:, both] == 1, "accept", "reject")
    assert method == KAPPA and n == 6 and math.isclose(value, cohen_kappa(list(words[0]), list(words[1])))


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(1)
    truth = rng.random(200) < 0.6
    noisy = np.where(rng.random(200) < 0.85, truth, ~truth)
    a, b = np.where(truth, "accept", "reject"), np.where(noisy, "accept", "reject")
    value = cohen_kappa(list(a), list(b))
    lo, hi = bootstrap(lambda idx: cohen_kappa(list(a[idx]), list(b[idx])), 200, 300)
    assert lo < value < hi and hi - lo < 0.4
    assert bootstrap(lambda idx: 1.0, 1) == (math.nan, math.nan)


def test_agreement_table_per_model_and_modality(tmp_path):
    store = Store(tmp_path)
    ids = log_answers(store, 6, "m1", "text") + log_answers(store, 6, "m2", "speech")
    bob = ["accept", "reject"] * 6
    alice = ["accept", "reject", "accept", "accept", "reject", "reject"] * 2
    for t, x, y in zip(ids, alice, bob):
        store.label("s1", t, x, annotator="alice")
        store.label("s2", t, y, annotator="bob")
        store.label("s3", t, "accept", annotator="carol") if t in ids[:3] else None
        store.append("judgement", "s-user", turn_id=t, verdict=y, judge_model="j")
    table = agreement(team_frame(read_records(tmp_path).records), n_resamples=200).set_index(["scope", "comparison"])
    assert {s for s, _ in table.index} == {"all", "model=m1", "model=m2", "modality=speech", "modality=text"}
    assert table.loc[("all", "human-human"), "method"] == ALPHA  # three annotators
    m2 = table.loc[("model=m2", "human-human")]
    assert m2["method"] == KAPPA and m2["annotators"] == "alice, bob" and m2["n"] == 6
    assert math.isclose(m2["value"], cohen_kappa(alice[6:], bob[6:]))
    judged = table.loc[("model=m2", "human-judge")]
    assert judged["n"] <= 6 and judged["method"] == KAPPA
    assert not table[["value"]].isna().all().all() and list(agreement_table(
        pd.DataFrame(columns=["turn_id", "annotator", "label", "model", "modality"]),
        pd.DataFrame(columns=["turn_id", "consensus", "judge", "model", "modality"])).columns)[-1] == "ci_high"


# ---- the judge from the app ----------------------------------------------------------------------------
def make_judge(url, cache):
    from blsp_demo.judge import Judge, OpenAIBackend, ReplyCache

    return lambda: Judge(OpenAIBackend(model="test-judge", base_url=url, max_retries=0), ReplyCache(cache))


def wait_idle(runner, timeout=30):
    deadline = time.monotonic() + timeout
    while runner.progress().running and time.monotonic() < deadline:
        time.sleep(0.02)
    return runner.progress()


def test_judge_runner_not_configured(tmp_path):
    runner = JudgeRunner(Store(tmp_path), configured=lambda: False)
    assert runner.start().message == NOT_CONFIGURED and not runner.progress().running


def test_judge_runner_judges_in_the_background_rate_limited_and_resumes(tmp_path):
    store = Store(tmp_path / "data")
    ids = log_answers(store, 4)
    store.write(TurnRecord(session="s-user", modality="text", text="q", model="m1", response="wrong answer"))
    store.append("judgement", "s-user", turn_id=ids[0], verdict="accept", judge_model="earlier")
    with JudgeDouble() as server:
        runner = JudgeRunner(store, make_judge(server.url, tmp_path / "cache"), per_minute=600,
                             configured=lambda: True)
        started = runner.start(annotator="alice", session="s-alice")
        assert started.running and started.total == 4  # one was judged before
        p = wait_idle(runner)
        assert (p.done, p.total, p.failed) == (4, 4, 0) and "Done: 4 judged" in p.message
        span = server.times[-1] - server.times[0]  # requests start 0.1 s apart (600 a minute)
        assert len(server.requests) == 4 and span >= 0.2  # unlimited: a few ms
        records = read_records(tmp_path / "data").records
        new = [r for r in records if r["kind"] == "judgement" and r.get("source") == "app"]
        assert {r["turn_id"] for r in new} == {t["id"] for t in records if t["kind"] == "turn"} - {ids[0]}
        assert all(r["annotator"] == "alice" and r["judge_model"] == "test-judge" for r in new)
        assert sorted(r["verdict"] for r in new) == ["accept", "accept", "accept", "reject"]
        assert runner.start().message == "Every answer already has a judgement."  # resumable: nothing left
        assert unjudged_turns(records) == []


def test_judge_runner_stops_and_carries_on(tmp_path):
    store = Store(tmp_path / "data")
    log_answers(store, 5)
    with JudgeDouble() as server:
        runner = JudgeRunner(store, make_judge(server.url, None), per_minute=120, configured=lambda: True)
        runner.start()
        time.sleep(0.2)
        stopped = runner.stop()
        assert not stopped.running and "carry on" in stopped.message and stopped.done < 5
        left = len(unjudged_turns(read_records(tmp_path / "data").records))
        assert left == 5 - stopped.done
        runner.per_minute = 6000
        assert runner.start().total == left
        assert wait_idle(runner).done == left and unjudged_turns(read_records(tmp_path / "data").records) == []


def test_judge_runner_reports_a_server_that_is_down(tmp_path):
    store = Store(tmp_path / "data")
    log_answers(store, 2)
    runner = JudgeRunner(store, make_judge("http://127.0.0.1:9/v1", None), per_minute=6000, configured=lambda: True)
    runner.start()
    p = wait_idle(runner)
    assert p.failed == 2 and "2 could not be judged" in p.message
    judged = [r for r in read_records(tmp_path / "data").records if r["kind"] == "judgement"]
    assert [r["verdict"] for r in judged] == ["unjudged", "unjudged"]  # recorded, tried again next run
    assert len(unjudged_turns(read_records(tmp_path / "data").records)) == 2
