"""No leaks: files only from the app's own folders, no secrets anywhere, inert text.

- `traversal_probes`: every way a client can name a file (the file routes, the upload route, the
  file-taking API endpoints /chat_audio and /compare) aimed at files the app must never serve:
  its records, its source, /etc/passwd, /proc/self/environ (which holds the planted secrets), a
  marker file beside the data dir. A probe leaks when the reply carries any of their contents.
- `secret_sources` + `find_secrets`: everything the app writes or shows (its log, the data dir,
  exports in every format, the page, its config and API description, the error messages it gave)
  searched for the planted OPENAI_API_KEY and HF_TOKEN.
- `inert_config`: the chat renders Markdown through Gradio's sanitizer, and every response carries
  a Content-Security-Policy that keeps remote images (tracking pixels) from loading.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .server import PLANTED_SECRETS, ROOT, close_soon

MARKER = "BLSP-LEAK-MARKER-7f3e9c"  # the content of the planted file beside the data dir


@dataclass
class Probe:
    route: str
    target: str
    status: int | str  # HTTP status, or "error: ..." for API calls
    leaked: bool

    def __str__(self) -> str:
        return f"{self.route} -> {self.target}: {self.status}{' LEAKED' if self.leaked else ''}"


def plant_marker(data_dir: Path) -> Path:
    path = Path(data_dir).resolve().parent / "outside-secret.txt"
    path.write_text(MARKER + "\n")
    return path


def targets(data_dir: Path) -> dict[str, Path]:
    """Files that must never be served, by what they stand for."""
    data_dir = Path(data_dir).resolve()
    records = sorted((data_dir / "records").glob("*.jsonl"))
    out = {"marker beside the data dir": plant_marker(data_dir), "app source": ROOT / "app.py",
           "/etc/passwd": Path("/etc/passwd"), "/proc/self/environ": Path("/proc/self/environ")}
    if records:
        out["records file"] = records[0]
    return out


def leaked(body: bytes, target: Path) -> bool:
    text = body.decode("utf-8", "replace")
    if MARKER in text or any(s in text for s in PLANTED_SECRETS) or "root:x:0:0" in text:
        return True
    try:
        own = target.read_text(encoding="utf-8", errors="replace")[:200]
    except OSError:
        return False
    return len(own) > 20 and own in text


def file_route_urls(url: str, data_dir: Path, target: Path) -> dict[str, str]:
    """The spellings of a file request: absolute, climbing out of an allowed folder, encoded."""
    audio = Path(data_dir).resolve() / "audio"
    examples = ROOT / "examples"
    climb = "../" * 12 + str(target).lstrip("/")
    base = url.rstrip("/")
    spellings = {
        "/gradio_api/file=ABS": f"{base}/gradio_api/file={target}",
        "/file=ABS": f"{base}/file={target}",
        "/gradio_api/file=AUDIO/../..": f"{base}/gradio_api/file={audio}/{climb}",
        "/gradio_api/file=EXAMPLES/../..": f"{base}/gradio_api/file={examples}/{climb}",
        "/gradio_api/file=%2e%2e": f"{base}/gradio_api/file={audio}/" + urllib.parse.quote(climb, safe=""),
        "/gradio_api/file=%252e": f"{base}/gradio_api/file={audio}/" + urllib.parse.quote(
            urllib.parse.quote(climb, safe=""), safe=""),
        "/gradio_api/file=//ABS": f"{base}/gradio_api/file=/{target}",
        "/gradio_api/file=AUDIO\\..": f"{base}/gradio_api/file={audio}" + "\\.." * 12 + str(target).replace("/", "\\"),
    }
    return spellings


def http_get(url: str) -> tuple[int, bytes]:
    import httpx

    try:
        r = httpx.get(url, timeout=30, follow_redirects=False)
        return r.status_code, r.content
    except httpx.HTTPError as err:
        return 0, str(err).encode()


def file_route_probes(url: str, data_dir: Path) -> list[Probe]:
    probes = []
    for name, target in targets(data_dir).items():
        for route, full in file_route_urls(url, data_dir, target).items():
            status, body = http_get(full)
            probes.append(Probe(route, name, status, status == 200 and leaked(body, target)))
    return probes


def gradio_upload_folder() -> Path:
    """Where Gradio keeps uploads (its documented GRADIO_TEMP_DIR, else the temp dir's gradio/)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def upload_probe(url: str, marker_dir: Path) -> Probe:
    """An upload whose file name climbs out of the upload folder must land inside it."""
    import httpx

    name = "../" * 10 + str(marker_dir.resolve()).lstrip("/") + "/escaped-upload.txt"
    r = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": (name, MARKER.encode())}, timeout=30)
    escaped = (marker_dir / "escaped-upload.txt").exists()
    stored = r.json()[0] if r.status_code == 200 else ""
    inside = str(Path(stored).resolve()).startswith(str(gradio_upload_folder().resolve())) if stored else True
    return Probe("/gradio_api/upload (file name with ../)", "a file beside the data dir", r.status_code,
                 escaped or not inside)


def api_probes(url: str, data_dir: Path) -> list[Probe]:
    """The file-taking endpoints, given paths instead of uploads."""
    from gradio_client import Client

    from .inputs import raw_predict

    probes = []
    client = Client(url, verbose=False)
    try:
        for name, target in targets(data_dir).items():
            file_data = {"path": str(target), "meta": {"_type": "gradio.FileData"}, "orig_name": target.name}
            for api, args in (("chat_audio", [file_data, ""]), ("compare", [file_data])):
                outputs, error = raw_predict(client, api, args)
                shown = json.dumps(outputs) if outputs is not None else str(error)
                probes.append(Probe(f"/{api} with a path", name, f"error: {str(error)[:80]}" if error else "answered",
                                    leaked(shown.encode(), target) or stored_copy(data_dir, target)))
    finally:
        close_soon(client)
    return probes


def stored_copy(data_dir: Path, target: Path) -> bool:
    """The target's bytes were copied into the served audio folder."""
    from blsp_demo.files import content_sha256

    try:
        digest = content_sha256(target)
    except OSError:
        return False
    return any(p.name.startswith(digest) for p in (Path(data_dir) / "audio").glob("*"))


def traversal_probes(url: str, data_dir: Path) -> list[Probe]:
    return [*file_route_probes(url, data_dir), upload_probe(url, Path(data_dir).resolve().parent),
            *api_probes(url, data_dir)]


def allowed_file_served(url: str) -> bool:
    """The control: a file the app does serve (a spoken example) comes back."""
    status, body = http_get(f"{url.rstrip('/')}/gradio_api/file={ROOT / 'examples' / 'capital_of_france.wav'}")
    return status == 200 and body[:4] == b"RIFF"


# ---- secrets ----------------------------------------------------------------------------------------
def secret_sources(url: str, data_dir: Path, log_text: str, messages: list[str]) -> dict[str, str]:
    """Everything a person or a log reader can see, as text, by where it came from."""
    out = {"server log": log_text, "error messages shown": "\n".join(messages)}
    for route in ("", "config", "gradio_api/info", "gradio_api/openapi.json"):
        status, body = http_get(url.rstrip("/") + "/" + route)
        out[f"GET /{route} ({status})"] = body.decode("utf-8", "replace")
    for path in sorted(Path(data_dir).rglob("*")):
        if path.is_file():
            out[f"data dir: {path.relative_to(data_dir)}"] = path.read_bytes().decode("utf-8", "replace")
    out.update(exports(data_dir))
    return out


def exports(data_dir: Path) -> dict[str, str]:
    """The Annotate tab's exports (CSV, JSONL, Parquet) of the data dir."""
    from blsp_demo.app.store import answers_frame, read_records
    from blsp_demo.app.annotation import EXPORT_FORMATS, export_answers

    frame = answers_frame(read_records(data_dir).records)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in EXPORT_FORMATS:
            path = export_answers(frame, fmt, Path(tmp))
            out[f"export .{fmt}"] = path.read_bytes().decode("utf-8", "replace")
    return out


def find_secrets(sources: dict[str, str]) -> list[str]:
    """Where any planted secret (or a long piece of one) appears."""
    pieces = {s[i:i + 16] for s in PLANTED_SECRETS for i in range(0, len(s) - 15, 4)}
    return [name for name, text in sources.items() if any(p in text for p in pieces)]


# ---- inert text ------------------------------------------------------------------------------------
def inert_config(url: str) -> list[str]:
    """Problems with how the chat renders text: sanitizer off, or no image policy on responses."""
    import httpx

    problems = []
    r = httpx.get(url.rstrip("/") + "/config", timeout=30)
    chat = [c for c in r.json()["components"] if c.get("props", {}).get("elem_id") == "chat"]
    if not chat or chat[0]["props"].get("sanitize_html") is not True:
        problems.append("the chat does not sanitize HTML")
    for route in ("", "config", "gradio_api/file=" + str(ROOT / "examples" / "capital_of_france.wav")):
        policy = httpx.get(url.rstrip("/") + "/" + route, timeout=30).headers.get("content-security-policy", "")
        if "img-src 'self'" not in policy:
            problems.append(f"GET /{route[:30]} has no image policy: {policy!r}")
    return problems
