"""Data that survives a Space restart (issue 16): the push on a timer and at SIGTERM, a Hub outage
of any length, reading the dataset back at start, two processes on one data dir, /data detection.

The Hub is a test double of `HfApi` holding the dataset's files in memory (it can fail on
demand); the scheduler, the store and the restore code are the real ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoUrl

from blsp_demo.app.hub_push import final_push, make_scheduler, restore_records
from blsp_demo.app.settings import AppSettings, default_data_dir
from blsp_demo.app.store import Store, read_records

REPO = "me/blsp-logs"


class DatasetDouble(HfApi):
    """A dataset repo in memory: commits apply their files; `down` makes every call fail."""

    def __init__(self, files: dict[str, bytes] | None = None, folder: Path | None = None):
        super().__init__(token=False)
        self.files = dict(files or {})
        self.commits: list[dict[str, bytes | None]] = []
        self.down = False
        self.folder = folder  # where hf_hub_download puts files (the library's cache, in miniature)

    def _check(self):
        if self.down:
            raise ConnectionError("the Hub is down (test double)")

    def create_repo(self, repo_id, **kw):
        self._check()
        return RepoUrl(f"https://huggingface.co/datasets/{repo_id}")

    def list_repo_files(self, repo_id, **kw):
        self._check()
        return sorted(self.files)

    def hf_hub_download(self, repo_id, filename, **kw):
        self._check()
        path = self.folder / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.files[filename])
        return str(path)

    def create_commit(self, repo_id, operations, **kw):
        self._check()
        change = {}
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                change[op.path_in_repo] = op.path_or_fileobj.read()
            else:
                assert isinstance(op, CommitOperationDelete)
                change[op.path_in_repo] = None
        for path, content in change.items():
            if content is None:
                self.files.pop(path, None)
            else:
                self.files[path] = content
        self.commits.append(change)
        return f"commit-{len(self.commits)}"

    def record_ids(self) -> set[str]:
        return {json.loads(line)["id"] for path, data in self.files.items() if path.startswith("data/records/")
                for line in data.decode().splitlines()}


def started(scheduler, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not hasattr(scheduler, "last_future"):
        assert time.monotonic() < deadline, "the scheduler never pushed"
        time.sleep(0.01)
    return scheduler.last_future.result(timeout=timeout)


def write_turns(store: Store, n: int, session: str = "A") -> list[str]:
    return [store.append("turn", session, conversation="c", turn_index=i, model="m", modality="text",
                         user_text=f"q{i}", response=f"a{i}")["id"] for i in range(n)]


def test_a_hub_outage_of_any_length_loses_nothing(tmp_path):
    api = DatasetDouble(folder=tmp_path / "dl")
    data = tmp_path / "data"
    scheduler = make_scheduler(REPO, data, hf_api=api, every=60)
    try:
        started(scheduler)
        store = Store(data, lock=scheduler.lock)
        ids = write_turns(store, 2)
        api.down = True
        for _ in range(3):  # pushes while the Hub is down fail; records keep coming
            with pytest.raises(ConnectionError):  # logged by the scheduler, whose timer goes on
                scheduler.trigger().result(timeout=30)
            ids += write_turns(store, 2)
        assert api.commits == []
        api.down = False
        assert scheduler.trigger().result(timeout=30) == "commit-1"
        assert api.record_ids() == set(ids)  # every acknowledged record, once
        assert scheduler.trigger().result(timeout=30) is None  # and nothing twice
    finally:
        scheduler.stop()


def test_the_timer_pushes_without_being_asked(tmp_path):
    api = DatasetDouble(folder=tmp_path / "dl")
    data = tmp_path / "data"
    scheduler = make_scheduler(REPO, data, hf_api=api, every=0.01)  # 0.6 s
    try:
        store = Store(data, lock=scheduler.lock)
        ids = write_turns(store, 3)
        deadline = time.monotonic() + 30
        while api.record_ids() != set(ids):
            assert time.monotonic() < deadline, "the timer never pushed the records"
            time.sleep(0.1)
    finally:
        scheduler.stop()


def test_final_push_sends_what_the_timer_has_not(tmp_path):
    api = DatasetDouble(folder=tmp_path / "dl")
    data = tmp_path / "data"
    scheduler = make_scheduler(REPO, data, hf_api=api, every=60)
    started(scheduler)
    store = Store(data, lock=scheduler.lock)
    ids = write_turns(store, 2)
    assert final_push(scheduler) is True
    assert api.record_ids() == set(ids)
    assert scheduler.trigger().result(timeout=30) is None  # stopped: no more pushes
    api.down = True
    assert final_push(scheduler) is True  # nothing left: no call at all
    write_turns(store, 1)
    assert final_push(scheduler) is False  # the Hub down at shutdown: said, not raised
    assert final_push(None) is True


def test_a_restarted_space_reads_its_history_back(tmp_path):
    old = tmp_path / "old-container"
    api = DatasetDouble(folder=tmp_path / "dl")
    first = make_scheduler(REPO, old, hf_api=api, every=60)
    started(first)
    store = Store(old, lock=first.lock)
    ids = write_turns(store, 3)
    final_push(first)
    store.close()

    new = tmp_path / "new-container"  # no persistent storage: a new, empty disk
    second = make_scheduler(REPO, new, hf_api=api, every=60)
    try:
        started(second)
        assert {r["id"] for r in read_records(new).records} == set(ids)
        assert len(api.commits) == 1  # the restored file is not pushed back
        store2 = Store(new, lock=second.lock)
        more = write_turns(store2, 1, session="B")
        assert second.trigger().result(timeout=30) == "commit-2"
        assert set(api.commits[1]) == {f"data/records/{store2.path.name}"}
        assert api.record_ids() == set(ids + more)
    finally:
        second.stop()


def test_restore_never_overwrites_a_local_file_and_survives_an_outage(tmp_path):
    data = tmp_path / "data"
    (data / "records").mkdir(parents=True)
    (data / "records" / "mine.jsonl").write_text('{"id": "local"}\n')
    api = DatasetDouble({"data/records/mine.jsonl": b'{"id": "remote"}\n', "data/records/other.jsonl": b'{"id": "o"}\n',
                         "data/audio/x.wav": b"RIFF", "data/records/sub/x.jsonl": b"{}\n"}, folder=tmp_path / "dl")
    restored = restore_records(api, REPO, data)
    assert set(restored) == {data / "records" / "other.jsonl"}
    assert (data / "records" / "mine.jsonl").read_text() == '{"id": "local"}\n'
    assert sorted(p.name for p in (data / "records").iterdir()) == ["mine.jsonl", "other.jsonl"]  # no leftovers
    api.down = True
    assert restore_records(api, REPO, tmp_path / "elsewhere") == {}  # logged; the app starts anyway


WRITER = textwrap.dedent("""
    import sys
    from blsp_demo.app.store import Store
    store = Store(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # both start writing at once
    for i in range(int(sys.argv[2])):
        store.append("turn", sys.argv[3], conversation="c", turn_index=i, model="m", modality="text",
                     user_text="x" * (i % 5000), response="y" * 3000)
""")


def test_two_processes_on_one_data_dir_never_tear_or_interleave_a_line(tmp_path):
    """An overlapping restart: the old and the new app write one data dir at the same time."""
    data, n = tmp_path / "data", 300
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(n), name], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for name in ("old", "new")]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=300) == 0
    files = sorted((data / "records").glob("*.jsonl"))
    assert len(files) == 2  # one file per process
    for f in files:
        lines = f.read_bytes().split(b"\n")
        assert lines[-1] == b""  # ends with a whole line
        records = [json.loads(line) for line in lines[:-1]]  # every line parses
        assert len(records) == n and len({r["session"] for r in records}) == 1  # one writer per file
        assert [r["turn_index"] for r in records] == list(range(n))
    result = read_records(data)
    assert len(result.records) == 2 * n


def test_the_data_dir_is_on_persistent_storage_when_a_space_has_it(tmp_path):
    persistent = tmp_path / "data"
    assert default_data_dir({}, persistent) == Path("data")
    assert default_data_dir({"SPACE_ID": "me/blsp"}, persistent) == Path("data")  # no /data: not mounted
    persistent.mkdir()
    assert default_data_dir({"SPACE_ID": "me/blsp"}, persistent) == persistent / "blsp-demo"
    assert default_data_dir({}, persistent) == Path("data")  # not a Space
    assert default_data_dir({"SPACE_ID": "me/blsp", "BLSP_DATA_DIR": "/x"}, persistent) == Path("/x")
    persistent.chmod(0o500)
    try:
        if not os.access(persistent, os.W_OK):  # (root may write anyway)
            assert default_data_dir({"SPACE_ID": "me/blsp"}, persistent) == Path("data")
    finally:
        persistent.chmod(0o700)


def test_push_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BLSP_PUSH_EVERY_MINUTES", "0.5")
    assert AppSettings.from_env().push_every_minutes == 0.5


@pytest.mark.parametrize("tokens,seconds,expected", [(128, 0, 21), (512, 0, 51), (128, 60, 33), (4096, 300, 120)])
def test_zerogpu_duration_grows_with_the_request(tokens, seconds, expected):
    from blsp_demo.app.services import gpu_duration

    assert gpu_duration(tokens, seconds) == expected


def test_gpu_wraps_with_a_duration_on_zerogpu(monkeypatch, tts_question):
    """`spaces` exists only on a Space: a stand-in records how the handler is wrapped."""
    import types

    from blsp_demo.app.services import audio_turn_seconds, gpu, gpu_duration, text_turn_seconds
    from blsp_demo.app.session import ChatSettings
    from blsp_demo.options import GenerationOptions

    def handler(text, state, settings, request=None):
        return "answered"

    assert gpu(handler, duration=text_turn_seconds) is handler  # no `spaces` here: unchanged
    wrapped = []
    spaces = types.SimpleNamespace(GPU=lambda fn, **kw: wrapped.append(kw) or fn)
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    assert gpu(handler, duration=text_turn_seconds)("hi", None, None) == "answered"
    assert wrapped == [{"duration": text_turn_seconds}]
    settings = ChatSettings("micro-cascade", GenerationOptions(max_new_tokens=300))
    assert text_turn_seconds("hi", None, settings) == gpu_duration(300)
    spoken = audio_turn_seconds(str(tts_question), "", None, settings)
    assert gpu_duration(300) < spoken <= gpu_duration(300, 5)  # the clip is about 2 s long
    assert audio_turn_seconds("/no/such.wav", "", None, settings) == gpu_duration(300)
