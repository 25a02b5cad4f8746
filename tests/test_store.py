"""The data dir: append-only records, torn lines, concurrent writers, deletion, pandas, Hub push."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoUrl

from blsp_demo.app.hub_push import make_scheduler
from blsp_demo.app.store import (AUDIO_DIR, RECOVERED_DIR, Store, answers_frame, live_records, read_records,
                             records_files)


def write_wav(path: Path, seconds: float = 0.5, freq: float = 440.0) -> Path:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")
    return path


def turn(store: Store, session: str, **fields) -> dict:
    base = {"conversation": "c-" + session, "turn_index": 0, "modality": "text", "text": "hi", "model": "m",
            "engine": "cascade", "response": "hello", "ttft_s": 0.1, "tokens_per_s": 10.0, "error": None}
    return store.append("turn", session, **{**base, **fields})


def test_records_have_id_ts_session_and_pandas_reads_them(tmp_path):
    store = Store(tmp_path)
    t = turn(store, "s1", options={"temperature": 0.0}, notices=["a"])
    store.label("s1", t["id"], "accept", "  fine  ")
    result = read_records(tmp_path)
    assert result.bad_lines == []
    assert [r["kind"] for r in result.records] == ["turn", "label"]
    for r in result.records:
        assert r["id"] and r["ts"].endswith("+00:00") and r["session"] == "s1"
    assert result.records[1]["turn_id"] == t["id"] and result.records[1]["reason"] == "fine"
    frame = pd.read_json(records_files(tmp_path)[0], lines=True)
    assert list(frame["kind"]) == ["turn", "label"] and frame.loc[0, "options"] == {"temperature": 0.0}


def test_bad_kind_and_verdict_are_refused(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        store.append("note", "s")
    with pytest.raises(ValueError, match="accept, reject, unset"):
        store.label("s", "t", "maybe")
    assert read_records(tmp_path).records == []


def test_torn_last_line_is_skipped_reported_and_recovered_on_restart(tmp_path):
    store = Store(tmp_path)
    kept = [turn(store, "s")["id"] for _ in range(3)]
    store.close()  # the writer "crashes" mid-line:
    with open(store.path, "ab") as f:
        f.write(b'{"kind": "label", "id": "x", "ts": "2')
    result = read_records(tmp_path)
    assert [r["id"] for r in result.records] == kept
    assert len(result.bad_lines) == 1 and result.bad_lines[0].torn and result.bad_lines[0].line_no == 4
    assert "torn last line" in str(result.bad_lines[0])
    with pytest.raises(ValueError):
        pd.read_json(store.path, lines=True)

    restarted = Store(tmp_path)  # the next process moves the fragment away
    assert len(restarted.recovered) == 1 and restarted.recovered[0].parent.name == RECOVERED_DIR
    assert restarted.recovered[0].read_bytes() == b'{"kind": "label", "id": "x", "ts": "2'
    assert list(pd.read_json(store.path, lines=True)["id"]) == kept
    assert read_records(tmp_path).bad_lines == []


def test_a_complete_last_record_without_newline_is_kept(tmp_path):
    store = Store(tmp_path)
    turn(store, "s")
    store.close()
    with open(store.path, "ab") as f:
        f.write(json.dumps({"kind": "label", "id": "y", "ts": "2030", "session": "s", "turn_id": "t"}).encode())
    Store(tmp_path)
    assert [r["id"] for r in read_records(tmp_path).records][-1] == "y"
    assert store.path.read_bytes().endswith(b"\n")


def test_a_live_writers_file_is_not_touched(tmp_path):
    live = Store(tmp_path)
    turn(live, "s")  # opens and flocks its file
    with open(live.path, "ab") as f:  # as if caught between two halves of a write
        f.write(b'{"half')
    Store(tmp_path)
    assert live.path.read_bytes().endswith(b'{"half')


def test_concurrent_writers_never_interleave(tmp_path):
    stores = [Store(tmp_path), Store(tmp_path)]  # two processes' files, four threads each
    n_threads, per_thread = 8, 150

    def work(k: int):
        store = stores[k % 2]
        for i in range(per_thread):
            store.append("label", f"s{k}", turn_id=f"t{k}-{i}", verdict="accept", reason="x" * (i % 50))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = read_records(tmp_path)
    assert result.bad_lines == []
    assert len(result.records) == n_threads * per_thread
    assert len({r["id"] for r in result.records}) == n_threads * per_thread
    assert sum(len(pd.read_json(p, lines=True)) for p in records_files(tmp_path)) == n_threads * per_thread


def test_audio_is_saved_once_by_content_hash(tmp_path):
    store = Store(tmp_path / "data")
    wav = write_wav(tmp_path / "q.WAV")
    copy = tmp_path / "other-name.wav"
    copy.write_bytes(wav.read_bytes())
    a = store.save_audio(wav, "s1")
    b = store.save_audio(copy, "s2")
    assert a == b and a.path == f"{AUDIO_DIR}/{a.sha256}.wav"
    assert [p.name for p in (tmp_path / "data" / AUDIO_DIR).iterdir()] == [f"{a.sha256}.wav"]


def test_delete_session_removes_its_audio_but_not_shared_audio(tmp_path):
    store = Store(tmp_path / "data")
    mine = store.save_audio(write_wav(tmp_path / "mine.wav", freq=300), "A")
    shared_a = store.save_audio(write_wav(tmp_path / "shared.wav", freq=500), "A")
    shared_b = store.save_audio(tmp_path / "shared.wav", "B")
    ta1 = turn(store, "A", modality="speech", audio_sha256=mine.sha256, audio_path=mine.path)
    ta2 = turn(store, "A", modality="speech", audio_sha256=shared_a.sha256, audio_path=shared_a.path)
    tb = turn(store, "B", modality="speech", audio_sha256=shared_b.sha256, audio_path=shared_b.path)
    store.label("A", tb["id"], "accept")  # A labelled B's answer: A's record
    store.label("B", ta1["id"], "reject")  # B labelled A's answer: about a deleted turn

    deletion = store.delete_session("A")
    assert deletion.records_deleted == 3 and deletion.audio_removed == [mine.path]
    assert not (store.data_dir / mine.path).exists() and (store.data_dir / shared_a.path).exists()
    live = live_records(read_records(store.data_dir).records)
    assert {r["id"] for r in live if r["kind"] != "deletion"} == {tb["id"]}
    assert ta2["id"] not in set(answers_frame(read_records(store.data_dir).records)["turn_id"])

    restarted = Store(store.data_dir)  # another process: knows of B's audio from the records alone
    assert restarted.delete_session("B").audio_removed == [shared_b.path]
    assert list((store.data_dir / AUDIO_DIR).iterdir()) == []
    assert answers_frame(read_records(store.data_dir).records).empty


def test_answers_frame_joins_latest_label_and_judge(tmp_path):
    store = Store(tmp_path)
    t1, t2 = turn(store, "s"), turn(store, "s", modality="speech", transcript_heard="what is two plus two")
    failed = turn(store, "s", response=None, error="The message is empty")
    store.label("s", t1["id"], "accept")
    store.label("s", t1["id"], "reject", "wrong")
    store.label("s", t2["id"], "accept")
    store.label("s", t2["id"], "unset")  # retracted
    store.append("judgement", "judge", turn_id=t1["id"], acceptable=False, judge_model="gpt")
    frame = answers_frame(read_records(tmp_path).records).set_index("turn_id")
    assert failed["id"] not in frame.index
    assert frame.loc[t1["id"], "label"] == "reject" and frame.loc[t1["id"], "label_reason"] == "wrong"
    assert frame.loc[t1["id"], "judge"] == "reject"
    assert pd.isna(frame.loc[t2["id"], "label"]) and frame.loc[t2["id"], "question"] == "what is two plus two"


# ---- Hub push with a fake HfApi -------------------------------------------------------------------
class FakeHfApi(HfApi):
    """Records what would be committed; no network."""

    def __init__(self, remote: list[str] | None = None):
        super().__init__(token=False)
        self.commits: list[list] = []
        self.remote = list(remote or [])

    def create_repo(self, repo_id, **kw):
        self.created = (repo_id, kw.get("repo_type"), kw.get("private"))
        return RepoUrl(f"https://huggingface.co/datasets/{repo_id}")

    def list_repo_files(self, repo_id, **kw):
        return list(self.remote)

    def create_commit(self, repo_id, operations, **kw):
        ops = []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                ops.append(("add", op.path_in_repo, op.path_or_fileobj.read()))
            else:
                assert isinstance(op, CommitOperationDelete)
                ops.append(("delete", op.path_in_repo, None))
        self.commits.append(ops)
        return f"commit-{len(self.commits)}"


def first_push(scheduler, timeout: float = 30):
    """The push the scheduler's thread starts at once (its future appears shortly after start)."""
    import time

    deadline = time.monotonic() + timeout
    while not hasattr(scheduler, "last_future"):
        assert time.monotonic() < deadline, "the scheduler never pushed"
        time.sleep(0.01)
    return scheduler.last_future.result(timeout=timeout)


def test_hub_push_commits_records_and_audio_then_deletions(tmp_path):
    api = FakeHfApi()
    data = tmp_path / "data"
    scheduler = make_scheduler("me/blsp-logs", data, hf_api=api, every=60)
    try:
        first_push(scheduler)  # the push at start: nothing yet
        assert api.created == ("me/blsp-logs", "dataset", True) and api.commits == []
        store = Store(data, lock=scheduler.lock)
        audio = store.save_audio(write_wav(tmp_path / "q.wav"), "A")
        t = turn(store, "A", modality="speech", audio_sha256=audio.sha256, audio_path=audio.path)
        store.label("A", t["id"], "accept")
        (data / "recovered").mkdir()
        (data / "recovered" / "x.txt").write_text("torn")

        assert scheduler.trigger().result(timeout=30) == "commit-1"
        (ops,) = api.commits
        committed = {path: content for _, path, content in ops}
        rec_path = f"data/records/{store.path.name}"
        assert set(committed) == {rec_path, f"data/{audio.path}"}
        assert [json.loads(line)["kind"] for line in committed[rec_path].decode().splitlines()] == ["turn", "label"]
        assert committed[f"data/{audio.path}"] == (data / audio.path).read_bytes()

        assert scheduler.trigger().result(timeout=30) is None  # nothing changed: no commit
        store.delete_session("A")
        assert scheduler.trigger().result(timeout=30) == "commit-2"
        kinds = {(kind, path) for kind, path, _ in api.commits[1]}
        assert kinds == {("add", rec_path), ("delete", f"data/{audio.path}")}
    finally:
        scheduler.stop()


def test_hub_push_after_restart_deletes_audio_the_repo_still_holds(tmp_path):
    data = tmp_path / "data"
    store = Store(data)
    audio = store.save_audio(write_wav(tmp_path / "q.wav"), "A")
    turn(store, "A", modality="speech", audio_sha256=audio.sha256, audio_path=audio.path)
    store.delete_session("A")
    api = FakeHfApi(remote=[f"data/{audio.path}", "data/records/old.jsonl"])
    scheduler = make_scheduler("me/blsp-logs", data, hf_api=api, every=60)
    try:
        first_push(scheduler)
        (ops,) = api.commits
        assert ("delete", f"data/{audio.path}", None) in ops
    finally:
        scheduler.stop()


def test_no_repo_no_scheduler(tmp_path):
    assert make_scheduler(None, tmp_path) is None


def test_an_unjudged_judgement_does_not_hide_an_earlier_verdict():
    from blsp_demo.app.store import latest_verdicts

    records = [{"kind": "judgement", "turn_id": "t1", "ts": "2026-01-01T00:00:00", "verdict": "accept"},
               {"kind": "judgement", "turn_id": "t1", "ts": "2026-01-02T00:00:00", "verdict": "unjudged"},
               {"kind": "label", "turn_id": "t2", "ts": "2026-01-01T00:00:00", "verdict": "reject"},
               {"kind": "label", "turn_id": "t2", "ts": "2026-01-02T00:00:00", "verdict": "unset"}]
    assert latest_verdicts(records, "judgement")["t1"]["verdict"] == "accept"
    assert "t2" not in latest_verdicts(records, "label")  # a retracted label is gone
