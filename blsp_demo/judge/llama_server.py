"""The offline judge as a real OpenAI-compatible server: llama.cpp's server (the pip package
`llama-cpp-python[server]`) serving the bundled SmolLM2-135M-Instruct GGUF on loopback.

    python -m blsp_demo.judge.llama_server [--port 8081]      # serve until Ctrl-C; prints the env to set
    Judge.from_env("llama-server")                      # start one for this process, stop at exit
    python -m evaluations.run ... --judge llama-server  # the same from the evaluation commands

It is what users run in practice (llama.cpp, vLLM, Ollama), so the judge's whole OpenAI path
(SDK, timeouts, retries, parsing, cache) is exercised offline. A 135M model is a weak judge: use it
to check the plumbing, a real judge model for numbers.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from blsp_demo.judge.backends import JudgeError, OpenAIBackend


class ServerError(RuntimeError):
    """The server could not be started (package missing, bad model file, not ready in time)."""


@dataclass(frozen=True)
class ServerOptions:
    gguf: Path | None = None  # default: the bundled SmolLM2-135M-Instruct (sha256-checked)
    host: str = "127.0.0.1"  # loopback only: the server has no authentication
    port: int = 0  # 0: a free port
    threads: int | None = None  # default: $BLSP_THREADS or all cores
    n_ctx: int = 2048
    alias: str = "llama.cpp:smollm2-135m-instruct-q4_1"
    start_timeout_s: float = 120.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the servers and tests of this project bind to it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bundled_gguf() -> Path:
    from blsp_demo.weights.sources import smollm2_gguf

    folder, name = smollm2_gguf()
    return folder / name


def server_command(opts: ServerOptions, port: int) -> list[str]:
    threads = opts.threads or int(os.environ.get("BLSP_THREADS", "0") or 0) or (os.cpu_count() or 1)
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(opts.gguf or bundled_gguf()),
            "--model_alias", opts.alias, "--host", opts.host, "--port", str(port), "--n_ctx", str(opts.n_ctx),
            "--n_threads", str(threads), "--n_threads_batch", str(threads)]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class LlamaServer:
    """One server process; `url` is the OpenAI base URL. Stopped by `close()`, at `with` exit, or
    when the object is collected / the interpreter exits."""

    options: ServerOptions = field(default_factory=ServerOptions)
    url: str = ""
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    def start(self) -> "LlamaServer":
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ServerError("llama.cpp's server is not installed: pip install 'llama-cpp-python[server]==0.3.36'") \
                from None
        port = self.options.port or free_port(self.options.host)
        fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen(server_command(self.options, port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        weakref.finalize(self, _stop, self.proc)
        self.url = f"http://{self.options.host}:{port}/v1"
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"llama.cpp's server exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self._fail(f"llama.cpp's server was not ready within {self.options.start_timeout_s:g} s")

    def _fail(self, why: str) -> None:
        tail = self.log_tail()  # read before close() removes the log
        self.close()
        raise ServerError(f"{why}:\n{tail}")

    def log_tail(self, n: int = 15) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def close(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "LlamaServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.close()


class LlamaServerBackend:
    """The judge's `openai` backend against a llama.cpp server this backend starts and owns."""

    def __init__(self, options: ServerOptions | None = None, **openai_kw):

        try:
            self.server = LlamaServer(options or ServerOptions()).start()
        except ServerError as err:
            raise JudgeError(str(err)) from None
        self._openai = OpenAIBackend(self.server.options.alias, self.server.url, api_key="local", **openai_kw)
        self.model = self._openai.model
        self.params = self._openai.params

    def complete(self, messages: list[dict]) -> str:

        try:
            return self._openai.complete(messages)
        except JudgeError:
            proc = self.server.proc
            if proc is not None and proc.poll() is not None:  # say why, not just "connection error"
                raise JudgeError(f"llama.cpp's server died (exit code {proc.returncode}); its last lines:\n"
                                 f"{self.server.log_tail()}") from None
            raise

    def close(self) -> None:
        self.server.close()

    def __repr__(self) -> str:
        return f"LlamaServerBackend(url={self.server.url!r})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m blsp_demo.judge.llama_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, default=None, help="a GGUF chat model (default: the bundled SmolLM2)")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    opts = ServerOptions(gguf=a.gguf, port=a.port, threads=a.threads)
    try:
        with LlamaServer(opts) as server:
            print(f"export OPENAI_BASE_URL={server.url} JUDGE_MODEL={opts.alias} OPENAI_API_KEY=local\n"
                  "serving; Ctrl-C stops it", flush=True)
            server.proc.wait()
    except ServerError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
