"""The copies of a person's audio that the web framework keeps outside the data dir.

Gradio keeps every upload, and a copy of every file a component shows (the chat's audio player),
in its upload cache: `GRADIO_TEMP_DIR`, else `<temp dir>/gradio`, as `<hash>/<name>`, and serves
them by URL. "Delete my data" and "Keep my audio" off must remove those copies too: `UploadCache`
finds them by content (the cache's folder names are salted hashes) and removes them, with the
folders they leave empty. The spoken examples are shared by everyone and never removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from blsp_demo.files import content_sha256

log = logging.getLogger(__name__)


def upload_cache_dir(environ=os.environ) -> Path:
    return Path(environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


@dataclass
class UploadCache:
    root: Path = field(default_factory=upload_cache_dir)
    protected: frozenset = frozenset()  # content hashes never removed (the spoken examples)

    def copies(self, sha256: str, size: int | None = None) -> list[Path]:
        """Every file under the cache whose content has this sha256 (only files of `size` bytes
        are hashed, when it is known)."""
        if not self.root.is_dir():
            return []
        found = []
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    if (path.is_file() and not path.is_symlink() and (size is None or path.stat().st_size == size)
                            and content_sha256(path) == sha256):
                        found.append(path)
        return found

    def purge(self, sha256: str | None, also: str | Path | None = None) -> list[Path]:
        """Remove every cached copy of `sha256` (and the file `also`, when it lies in the cache);
        returns what was removed."""
        if not sha256 or sha256 in self.protected:
            return []
        size = Path(also).stat().st_size if also is not None and Path(also).is_file() else None
        targets = set(self.copies(sha256, size))
        if also is not None and self.holds(also):
            targets.add(Path(also).resolve())
        removed = []
        for path in sorted(targets):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
            self._drop_empty_parents(path.parent)
        if removed:
            log.info("removed %d cached copies of audio %s", len(removed), sha256[:12])
        return removed

    def holds(self, path: str | Path) -> bool:
        try:
            return Path(path).resolve().is_relative_to(self.root)
        except OSError:
            return False

    def _drop_empty_parents(self, folder: Path) -> None:
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                return
            folder = folder.parent
