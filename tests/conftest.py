"""Shared fixtures. Tests run torch on one thread: the machine has two cores and CI shares them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from blsp_demo.judge.llama_server import free_port  # noqa: F401 - tests import it from here

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny.py
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ.get("BLSP_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory) -> Path:
    """A tiny random checkpoint in the official BLSP layout (see tests/tiny.py)."""
    from tiny import write_official_checkpoint

    return write_official_checkpoint(tmp_path_factory.mktemp("official-blsp"))


@pytest.fixture(scope="session")
def tts_question(tmp_path_factory) -> Path:
    """A spoken question made with espeak-ng (16 kHz WAV)."""
    import subprocess

    out = tmp_path_factory.mktemp("tts") / "question.wav"
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "120", "-w", str(raw), "what is the capital of france"],
                   check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), "-ar", "16000", "-ac", "1",
                    str(out)], check=True)
    return out


# ---- the real app (issue 3): in-process on the offline default model --------------------------


@pytest.fixture(scope="session")
def live_app(tmp_path_factory):
    """The real app on the offline default model (real weights), launched in this process on a free
    port with a fresh data dir. Yields an object with `url`, `data_dir`, `services`."""
    from types import SimpleNamespace

    from blsp_demo.app.settings import AppSettings
    from blsp_demo.ui import Services, build_demo, launch_options

    os.environ["BLSP_THREADS"] = "1"
    data_dir = tmp_path_factory.mktemp("app-data")
    from blsp_demo.engine.registry import DEFAULT_MODEL

    from blsp_demo.app.limits import RateLimits, SessionGate

    services = Services.create(AppSettings(model=DEFAULT_MODEL, data_dir=data_dir))
    # every client of these tests is on 127.0.0.1: the limits count sessions, as two people's would
    services.gate = SessionGate(RateLimits.from_env(limit_by="session"))
    services.pool.get(DEFAULT_MODEL)  # load before the first request: tests time the answers
    demo = build_demo(services)
    demo.launch(**launch_options(services, server_port=free_port(), prevent_thread_lock=True, quiet=True))
    yield SimpleNamespace(url=demo.local_url, data_dir=data_dir, services=services)
    demo.close()


# ---- the real app as a subprocess, for the hardening tests (issue 7) ------------------------------
@pytest.fixture(scope="session")
def hardened_app(tmp_path_factory):
    """`python app.py` on micro-cascade (real offline weights) with planted fake secrets in its
    environment and short answers; its own data dir. An `evaluations.reliability.server.AppServer`."""
    from evaluations.reliability.server import AppServer, ServerOptions

    server = AppServer(ServerOptions(tmp_path_factory.mktemp("hardened") / "data", max_new_tokens=6))
    server.start()
    yield server
    server.stop()
