"""A test double of the Hugging Face Hub, over real HTTP: enough of the Hub's API for
`huggingface_hub.snapshot_download` / `hf_hub_download` (repo info, tree listing, HEAD and GET of
`resolve/` URLs) and for `HfApi.create_repo` / `create_commit` of regular (non-LFS) files, which
`CommitScheduler` uses. Point HF_ENDPOINT at `HubDouble.url`.

It stands in for huggingface.co only: the client library, the app and everything up to the socket
are the real ones. Repos are in memory (files as bytes or as paths on disk); every commit is kept
(`commits`), and `outage` makes every request answer 503.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

API = re.compile(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)/(revision|tree|preupload|commit)/([^/]+)(/.*)?")
RESOLVE = re.compile(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


@dataclass
class Repo:
    files: dict[str, bytes | Path] = field(default_factory=dict)
    commit: str = ""
    commits: list[dict] = field(default_factory=list)  # {"oid", "summary", "files": {path: bytes}, "deleted"}

    def __post_init__(self):
        self.commit = self.commit or _oid(b"initial", json.dumps(sorted(self.files)).encode())

    def data(self, path: str) -> bytes:
        value = self.files[path]
        return value.read_bytes() if isinstance(value, Path) else value

    def size(self, path: str) -> int:
        value = self.files[path]
        return value.stat().st_size if isinstance(value, Path) else len(value)

    def etag(self, path: str) -> str:
        value = self.files[path]
        key = f"{value}:{value.stat().st_size}:{value.stat().st_mtime_ns}".encode() if isinstance(value, Path) else value
        return hashlib.sha256(key).hexdigest()


def _oid(*parts: bytes) -> str:
    return hashlib.sha1(b"".join(parts)).hexdigest()  # 40 hex digits, like a git commit


class HubDouble:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}  # (models|datasets, repo id) -> Repo
        self.outage = False
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "HubDouble":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, kind: str, repo_id: str, files: dict[str, bytes | Path]) -> Repo:
        repo = self.repos[(kind, repo_id)] = Repo(dict(files))
        return repo

    def commit(self, kind: str, repo_id: str, summary: str, added: dict[str, bytes], deleted: list[str]) -> str:
        with self.lock:
            repo = self.repos.setdefault((kind, repo_id), Repo())
            repo.files.update(added)
            for path in deleted:
                repo.files.pop(path, None)
            repo.commit = _oid(repo.commit.encode(), summary.encode(), *added.values())
            repo.commits.append({"oid": repo.commit, "summary": summary, "files": added, "deleted": deleted})
            return repo.commit


def _handler(hub: HubDouble):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and body:
                self.wfile.write(body)

        def _json(self, status: int, value) -> None:
            self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, message: str, code: str = "") -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self, method: str) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((method, path))
            body = self._body() if method == "POST" else b""
            if hub.outage:
                return self._error(503, "Service Unavailable (test double outage)")
            if method == "POST" and path == "/api/repos/create":
                return self._create(json.loads(body or b"{}"))
            if m := API.fullmatch(path):
                return self._api(method, *m.groups(), body)
            if m := RESOLVE.fullmatch(path):
                kind, repo_id, _rev, file = m.groups()
                return self._resolve(kind or "models", repo_id, file, head=method == "HEAD")
            self._error(404, f"not served by the Hub double: {method} {path}")

        def _repo(self, kind: str, repo_id: str) -> Repo | None:
            repo = hub.repos.get((kind, repo_id))
            if repo is None:
                self._error(404, f"Repository Not Found for url: {self.path}.", "RepoNotFound")
            return repo

        def _create(self, payload: dict) -> None:
            kind = f"{payload.get('type') or 'model'}s"
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            with hub.lock:
                exists = (kind, repo_id) in hub.repos
                hub.repos.setdefault((kind, repo_id), Repo())
            prefix = "" if kind == "models" else f"{kind}/"
            url = f"{hub.url}/{prefix}{repo_id}"
            if exists:  # the Hub answers 409 with the url; exist_ok=True reads it
                return self._send(409, json.dumps({"error": "You already created this repo", "url": url}).encode(),
                                  {"Content-Type": "application/json", "X-Error-Message": "You already created this repo"})
            self._json(200, {"url": url})

        def _api(self, method, kind, repo_id, action, rev, rest, body) -> None:
            repo = self._repo(kind, repo_id)
            if repo is None:
                return
            if action == "revision" and method == "GET":
                return self._json(200, {"id": repo_id, "sha": repo.commit, "private": False,
                                        "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
            if action == "tree" and method == "GET":
                under = (rest or "").strip("/")
                return self._json(200, [{"type": "file", "path": p, "size": repo.size(p), "oid": repo.etag(p)[:40]}
                                        for p in sorted(repo.files) if not under or p.startswith(under + "/")])
            if action == "preupload" and method == "POST":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files]})
            if action == "commit" and method == "POST":
                return self._commit(kind, repo_id, body)
            self._error(405, f"{method} {action} is not served by the Hub double")

        def _commit(self, kind: str, repo_id: str, body: bytes) -> None:
            summary, added, deleted = "", {}, []
            for line in body.splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value.get("summary", "")
                elif item["key"] == "file":
                    added[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
                else:
                    return self._error(400, f"the Hub double takes no {item['key']!r} operations (LFS files)")
            oid = hub.commit(kind, repo_id, summary, added, deleted)
            prefix = "" if kind == "models" else f"{kind}/"
            self._json(200, {"commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid,
                             "success": True})

        def _resolve(self, kind: str, repo_id: str, file: str, head: bool) -> None:
            repo = self._repo(kind, repo_id)
            if repo is None:
                return
            if file not in repo.files:
                return self._error(404, f"Entry Not Found for url: {self.path}.", "EntryNotFound")
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.etag(file)}"',
                       "Content-Length": repo.size(file), "Content-Type": "application/octet-stream"}
            if head:
                return self._send(200, b"", headers, head=True)
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.end_headers()
            value = repo.files[file]
            if isinstance(value, Path):
                with open(value, "rb") as f:
                    while chunk := f.read(1 << 20):
                        self.wfile.write(chunk)
            else:
                self.wfile.write(value)

        def do_GET(self):
            self._route("GET")

        def do_HEAD(self):
            self._route("HEAD")

        def do_POST(self):
            self._route("POST")

    return Handler
