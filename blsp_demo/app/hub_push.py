"""Push the data dir to a Hugging Face dataset repo every few minutes (when HF_DATASET_REPO is set).

`huggingface_hub.CommitScheduler` uploads new and grown files; this subclass also removes from the
repo the audio files that a `deletion` record removed locally, so "delete my data" reaches the Hub.
The token comes from the usual places (HF_TOKEN, the saved login) and is never logged here.
"""

from __future__ import annotations

import logging
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
                 path_in_repo: str = "data", hf_api=None, private: bool | None = True, **kw):
        self._remote_files: set[str] | None = None  # repo paths under path_in_repo, listed once
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
            if self.last_uploaded.get(path) != stat.st_mtime:
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


def make_scheduler(repo_id: str | None, data_dir: Path, hf_api=None, every: float = DEFAULT_EVERY_MINUTES):
    """A running scheduler when `repo_id` is set, else None (everything stays local)."""
    if not repo_id:
        return None
    return DataDirScheduler(repo_id=repo_id, folder_path=data_dir, every=every, hf_api=hf_api)
