"""The real app as a subprocess (`python app.py`) on a data dir of its own: start, wait until it
answers, SIGKILL, restart. Shared by the hardening tests and `python -m evaluations.reliability`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from blsp_demo.judge.llama_server import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "micro-cascade"  # the offline default: Whisper base + SmolLM2-135M-Instruct
FAKE_OPENAI_KEY = "sk-PLANTED-openai-0123456789abcdefPLANTED"  # recognizable, never valid
FAKE_HF_TOKEN = "hf_PLANTEDhubtoken0123456789abcdefPLANTED"
PLANTED_SECRETS = (FAKE_OPENAI_KEY, FAKE_HF_TOKEN)


@dataclass(frozen=True)
class ServerOptions:
    data_dir: Path
    max_new_tokens: int = 16  # short answers: the figures measure the app, not a long generation
    model: str = MODEL
    env: dict = field(default_factory=dict)  # more environment (limits, planted secrets)
    start_timeout_s: float = 300.0


def server_env(options: ServerOptions) -> dict:
    """The server's environment: one torch thread (the machine has two cores), the planted
    secrets (a leak test greps for them), short answers, and `options.env` on top. Every client of
    these scenarios comes from 127.0.0.1, so the limits count sessions (`BLSP_LIMIT_BY=session`)
    unless a scenario asks for addresses (the rotating-hash one does)."""
    env = {**os.environ, "BLSP_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "BLSP_LIMIT_BY": "session",
           "BLSP_MAX_NEW_TOKENS": str(options.max_new_tokens),
           "OPENAI_API_KEY": FAKE_OPENAI_KEY, "HF_TOKEN": FAKE_HF_TOKEN}
    env.pop("HF_DATASET_REPO", None)  # never push test data anywhere
    return {**env, **{k: str(v) for k, v in options.env.items()}}


class AppServer:
    """One `python app.py` process; `restart()` starts a new one on the same data dir."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.data_dir = Path(options.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._log_start = 0  # where this run's lines begin in the log (a restart appends)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "AppServer":
        self.port = free_port()
        self._log_start = len(self.log_text())
        cmd = [sys.executable, "app.py", "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--model", self.options.model]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=server_env(self.options), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_up()
        return self

    def wait_up(self) -> None:
        """Until the page answers and the model is loaded (the first turn is not a cold start)."""
        deadline = time.monotonic() + self.options.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
            if self._loaded() and self._page_up():
                return
            time.sleep(0.3)
        raise RuntimeError(f"the server did not come up in {self.options.start_timeout_s:.0f} s:\n{self.log_tail()}")

    def _page_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def _loaded(self) -> bool:
        return f"model {self.options.model} loaded" in self.log_text()[self._log_start:]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log_text()[-n:]

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no flush, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> "AppServer":
        self.stop()
        return self.start()

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def close_soon(client) -> None:
    """Stop a gradio_client Client's heartbeat without waiting the second its close() joins for."""
    import threading

    threading.Thread(target=client.close, daemon=True).start()
