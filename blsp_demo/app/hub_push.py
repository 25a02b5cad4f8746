"""Push the data dir to a Hugging Face dataset repo every few minutes (when HF_DATASET_REPO is set).

`huggingface_hub.CommitScheduler` uploads new and grown files; this subclass also removes from the
repo the audio files that a `deletion` record removed locally, so "delete my data" reaches the Hub.
The token comes from the usual places (HF_TOKEN, the saved login) and is never logged here.

So that every acknowledged record reaches the dataset on a Space without persistent storage:
- a push on the timer (`every` minutes) and one at shutdown (`final_push`, called on SIGTERM);
- a failed push marks nothing as pushed: the next one sends the same files again (with what was
  appended since), so a Hub outage of any length loses nothing that the disk still holds;
- at start, `restore_records` copies the dataset's `records/*.jsonl` that the data dir lacks into
  it (whole files, renamed into place), so a restarted Space shows its history. Each process
  writes its own records file, so a restored file is never appended to, only read.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, CommitScheduler
from huggingface_hub._commit_scheduler import PartialFileIO

from blsp_demo.app.store import AUDIO_DIR, RECORDS_DIR, read_records

log = logging.getLogger(__name__)

PUSHED = [f"{RECORDS_DIR}/*.jsonl", f"{AUDIO_DIR}/*"]  # not recovered/ fragments, not .tmp copies
DEFAULT_EVERY_MINUTES = 5.0


class DataDirScheduler(CommitScheduler):
    """A CommitScheduler for a store's data dir (append-only records, audio by hash)."""

    def __init__(self, *, repo_id: str, folder_path: str | Path, every: float = DEFAULT_EVERY_MINUTES,
                 path_in_repo: str = "data", hf_api=None, private: bool | None = True,
                 restored: dict[Path, float] | None = None, **kw):
        self._remote_files: set[str] | None = None  # repo paths under path_in_repo, listed once
        self._restored = dict(restored or {})  # local path -> mtime of files read back from the repo
        super().__init__(repo_id=repo_id, repo_type="dataset", folder_path=folder_path, every=every,
                         path_in_repo=path_in_repo, hf_api=hf_api, private=private,
                         allow_patterns=PUSHED, ignore_patterns=[".*", "*.tmp"], **kw)

    def _prefix(self) -> str:
        return f"{self.path_in_repo.strip('/')}/" if self.path_in_repo else ""

    def _changed_files(self) -> list[tuple[Path, str, int, float]]:
        """(local path, path in repo, size, mtime) of each file that changed since its last push."""
        out = []
        for path in sorted(self.folder_path.glob("**/*")):
            rel = path.relative_to(self.folder_path).as_posix()
            if not path.is_file() or path.name.startswith(".") or not any(Path(rel).match(p) for p in PUSHED):
                continue
            stat = path.stat()
            if self.last_uploaded.get(path, self._restored.get(path)) != stat.st_mtime:
                out.append((path, self._prefix() + rel, stat.st_size, stat.st_mtime))
        return out

    def _deleted_audio(self) -> list[str]:
        """Repo paths of audio that deletion records removed and that the repo still holds."""
        if self._remote_files is None:
            files = self.api.list_repo_files(repo_id=self.repo_id, repo_type=self.repo_type, revision=self.revision)
            self._remote_files = {f for f in files if f.startswith(self._prefix())}
        removed = {self._prefix() + rel for r in read_records(self.folder_path).records
                   if r.get("kind") == "deletion" for rel in r.get("audio_removed") or ()}
        return sorted(p for p in removed & self._remote_files
                      if not (self.folder_path / p[len(self._prefix()):]).exists())

    def push_to_hub(self):
        with self.lock:  # a consistent snapshot: the store writes whole lines under this lock
            changed = self._changed_files()
            adds = [CommitOperationAdd(path_or_fileobj=PartialFileIO(p, size_limit=size), path_in_repo=repo_path)
                    for p, repo_path, size, _ in changed]
        deletes = [CommitOperationDelete(path_in_repo=p) for p in self._deleted_audio()]
        if not adds and not deletes:
            return None
        info = self.api.create_commit(repo_id=self.repo_id, repo_type=self.repo_type, operations=adds + deletes,
                                      commit_message=f"Data: {len(adds)} files updated, {len(deletes)} deleted",
                                      revision=self.revision)
        for p, repo_path, _, mtime in changed:
            self.last_uploaded[p] = mtime
            self._remote_files.add(repo_path)
        self._remote_files -= {d.path_in_repo for d in deletes}
        log.info("pushed %d files and %d deletions to %s", len(adds), len(deletes), self.repo_id)
        return info


def restore_records(api, repo_id: str, data_dir: Path, path_in_repo: str = "data") -> dict[Path, float]:
    """Copies the dataset's records files that `data_dir` lacks into it; returns {local path: mtime}
    of those copied (they are in the repo already: not pushed again). Files the data dir holds are
    never touched: there, the local copy is the one its process appended to."""
    prefix = f"{path_in_repo.strip('/')}/{RECORDS_DIR}/" if path_in_repo else f"{RECORDS_DIR}/"
    try:
        names = [f for f in api.list_repo_files(repo_id=repo_id, repo_type="dataset")
                 if f.startswith(prefix) and f.endswith(".jsonl") and "/" not in f[len(prefix):]]
    except Exception as err:  # noqa: BLE001 - a repo that does not exist yet, or the Hub is down
        log.warning("not reading back the records of %s: %s", repo_id, err)
        return {}
    folder = Path(data_dir) / RECORDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    restored = {}
    for name in names:
        target = folder / name[len(prefix):]
        if target.exists():
            continue
        tmp = folder / f".{target.name}.{os.getpid()}.restore.tmp"  # hidden: neither read nor pushed
        try:
            downloaded = api.hf_hub_download(repo_id=repo_id, filename=name, repo_type="dataset")
            shutil.copyfile(downloaded, tmp)
            os.link(tmp, target)  # fails if the file appeared meanwhile: never overwrite a record file
            restored[target] = target.stat().st_mtime
        except FileExistsError:
            pass
        except Exception as err:  # noqa: BLE001 - the rest of the history is still worth having
            log.warning("could not read back %s from %s: %s", name, repo_id, err)
        finally:
            tmp.unlink(missing_ok=True)
    if restored:
        log.info("read back %d records files from %s", len(restored), repo_id)
    return restored


def final_push(scheduler) -> bool:
    """The last push at shutdown (SIGTERM): stops the timer, then pushes what is left, in this
    thread. False when it failed (the files stay on disk; with persistent storage the next start
    pushes them)."""
    if scheduler is None:
        return True
    scheduler.stop()
    try:
        scheduler.push_to_hub()
        return True
    except Exception as err:  # noqa: BLE001 - logged; nothing else can be done while shutting down
        log.error("the final push to %s failed: %s", scheduler.repo_id, err)
        return False


def make_scheduler(repo_id: str | None, data_dir: Path, hf_api=None, every: float = DEFAULT_EVERY_MINUTES,
                   restore: bool = True):
    """A running scheduler when `repo_id` is set, else None (everything stays local). With
    `restore`, the dataset's records the data dir lacks are read back first."""
    if not repo_id:
        return None
    if hf_api is None:
        from huggingface_hub import HfApi

        hf_api = HfApi()
    restored = restore_records(hf_api, repo_id, data_dir) if restore else {}
    return DataDirScheduler(repo_id=repo_id, folder_path=data_dir, every=every, hf_api=hf_api, restored=restored)
