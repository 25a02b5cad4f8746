"""Hands-free in a real browser: headless Chromium with a fake microphone playing a WAV (silence,
a spoken question, a pause, a second question during the answer, silence). One click opens the
microphone; after that no click: the VAD's pause sends the question, the answer is spoken while it
streams (its first audio reaches the browser before the text is complete), and the second
question interrupts it (barge-in) and is answered in turn. The end-of-speech latencies of the
turns are printed and checked against the turn records.

The first test's engine is a fake that streams a fixed three-sentence answer at a steady pace (it
is about the UI flow); `test_voice_browser_real_model` times the real offline model.
Needs apt's /usr/bin/chromium and pip's playwright (never `playwright install`)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port

from blsp_demo.app.store import read_records

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"]
ANSWER = "Paris is the capital of France. It is a large city on the river Seine. Many people visit it every year."
LEAD_S = 12.0  # silence before the first question: the streaming microphone takes a few seconds to start
OUT = Path(__file__).resolve().parents[1] / "test-output"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs chromium (apt install chromium)")]


def mic_file(folder: Path, gap_s: float) -> Path:
    """LEAD_S of silence, question 1, `gap_s` of silence, question 2, a minute of silence (Chromium
    loops the file; it must not come round again during the test)."""
    q1, q2, out = folder / "q1.wav", folder / "q2.wav", folder / "mic.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "110", "-w", str(q1), "What is the capital of France?"], check=True)
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "110", "-w", str(q2), "And what about Italy?"], check=True)
    graph = (f"[0]aresample=16000,adelay={int(LEAD_S * 1000)},apad=pad_dur={gap_s}[a];"
             "[1]aresample=16000,apad=pad_dur=60[b];[a][b]concat=n=2:v=0:a=1")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(q1), "-i", str(q2),
                    "-filter_complex", graph, "-ac", "1", "-ar", "16000", str(out)], check=True)
    return out


class PacedEngine:
    """The fake engine of the handler tests, paced: one word every `pace_s` seconds."""

    def __init__(self, pace_s: float):
        from test_ui_handlers import FakeEngine

        self.inner = FakeEngine(tokens=tuple(w + " " for w in ANSWER.split()))
        self.pace_s, self.model_id, self.name, self.revision = pace_s, "paced-fake", "cascade", "rev1"

    def stream(self, conv, options):
        for chunk in self.inner.stream(conv, options):
            time.sleep(self.pace_s)
            yield chunk

    def forget(self, conv_id):
        self.inner.forget(conv_id)


@pytest.fixture(scope="module")
def paced_app(tmp_path_factory):
    from types import SimpleNamespace

    from test_ui_handlers import make_services

    from blsp_demo.ui import build_demo, launch_options

    data_dir = tmp_path_factory.mktemp("voice-browser") / "data"
    services = make_services(data_dir, {"fake": PacedEngine(0.25)})
    demo = build_demo(services)
    demo.launch(**launch_options(services, server_port=free_port(), prevent_thread_lock=True, quiet=True))
    yield SimpleNamespace(url=demo.local_url, data_dir=data_dir)
    demo.close()


def handsfree_turns(data_dir: Path) -> list[dict]:
    return [r for r in read_records(data_dir).records if r["kind"] == "turn" and r.get("hands_free")]


def open_page(p, mic: Path, url: str):
    ctx = p.chromium.launch_persistent_context(
        tempfile.mkdtemp(prefix="chr-voice-"), executable_path=str(CHROMIUM), headless=True,
        args=FLAGS + [f"--use-file-for-fake-audio-capture={mic}"], viewport={"width": 1200, "height": 1600})
    page = ctx.pages[0] if ctx.pages else ctx.new_page()
    page.goto(url)
    page.wait_for_selector("#handsfree button.record-button", timeout=60_000)
    return ctx, page


def sample(page) -> dict:
    """What the page shows now: the phase, the last answer's text, the spoken-answer player."""
    return page.evaluate("""() => {
        const bots = document.querySelectorAll('#chat .message.bot');
        const phase = document.querySelector('#voice_phase');
        const a = document.querySelector('#reply_audio audio');
        return {phase: phase && phase.dataset.phase, bots: bots.length,
                text: bots.length ? bots[bots.length - 1].innerText : '',
                audio_src: !!(a && a.src), audio_time: a ? a.currentTime : 0,
                status: (document.querySelector('#status') || {}).innerText || ''};
    }""")


def watch(page, until, timeout: float, log: list) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = sample(page)
        s["t"] = time.monotonic()
        log.append(s)
        if until(s):
            return s
        time.sleep(0.1)
    raise AssertionError(f"timed out; last samples: {log[-3:]}")


def test_handsfree_spoken_answer_and_barge_in(paced_app, tmp_path):
    from playwright.sync_api import sync_playwright

    OUT.mkdir(exist_ok=True)
    mic = mic_file(tmp_path, gap_s=3.5)
    with sync_playwright() as p:
        ctx, page = open_page(p, mic, paced_app.url)
        segments = []  # (time, url) of each spoken-answer audio segment the browser fetched
        page.on("response", lambda r: "/stream/" in r.url and ".aac" in r.url
                and segments.append((time.monotonic(), r.url)))
        page.check("#speak input")
        page.click("#handsfree button.record-button")  # the only click: the microphone stays open
        log: list[dict] = []
        watch(page, lambda s: s["phase"] == "listening", 30, log)
        # question 1 is heard, then sent on the pause; its answer streams and is spoken
        watch(page, lambda s: s["phase"] == "hearing", LEAD_S + 15, log)
        first_words = watch(page, lambda s: "Paris" in s["text"], 30, log)
        spoken_early = watch(page, lambda s: s["audio_src"] or s["text"].strip() == ANSWER, 30, log)
        # question 2 during the answer: barge-in, then its own answer, with no click
        watch(page, lambda s: len(handsfree_turns(paced_app.data_dir)) >= 2 and "first audio" in s["status"],
              90, log)
        page.screenshot(path=str(OUT / "voice_handsfree.png"), full_page=True)
        ctx.close()

    assert spoken_early["audio_src"] and spoken_early["text"].strip() != ANSWER, \
        "the spoken answer must reach the player before the text is complete"
    assert ANSWER.startswith(spoken_early["text"].strip())
    turns = handsfree_turns(paced_app.data_dir)
    assert len(turns) == 2, [(t.get("error_code"), t.get("response")) for t in turns]
    interrupted, second = turns
    assert interrupted["error_code"] == "cancelled"  # the barge-in stopped it mid-answer
    assert second["response"].strip() == ANSWER and second["error"] is None
    assert second["audio_duration_s"] > 0.8 and second["reply_audio_path"]  # heard the question; kept the reply
    assert 0 < second["question_end_ttft_s"] < second["first_audio_s"] < 30
    assert {"listening", "hearing", "thinking", "speaking"} <= {s["phase"] for s in log}  # the indicator
    first_segment = min(t for t, _ in segments)
    complete = next((s["t"] for s in log if s["text"].startswith(ANSWER)), None)  # answer 1 written out
    print(f"\nhands-free (paced fake engine): end of speech -> first token {second['question_end_ttft_s']:.2f} s, "
          f"-> first audio {second['first_audio_s']:.2f} s (server, answer 2); browser, answer 1: first words shown "
          f"-> player opened {spoken_early['t'] - first_words['t']:.2f} s, -> first audio segment fetched "
          f"{first_segment - first_words['t']:.2f} s, -> text complete "
          + (f"{complete - first_words['t']:.2f} s" if complete else "never (interrupted)"))


@pytest.fixture(scope="module")
def slow_mic(tmp_path_factory) -> Path:
    """One question slowly (Whisper base hears 100 wpm espeak right through the browser), then silence."""
    folder = tmp_path_factory.mktemp("voice-mic")
    raw, out = folder / "raw.wav", folder / "mic.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "100", "-w", str(raw), "What is the capital of France?"],
                   check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), "-af",
                    f"aresample=16000,adelay={int(LEAD_S * 1000)},apad=pad_dur=60", "-ac", "1", str(out)], check=True)
    return out


def test_voice_browser_real_model(live_app, slow_mic):
    """The offline default model hands-free with spoken answers: the end-of-speech
    latencies of a real turn on this CPU."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx, page = open_page(p, slow_mic, live_app.url)
        page.check("#speak input")
        page.click("#handsfree button.record-button")
        log: list[dict] = []
        watch(page, lambda s: "first audio" in s["status"], LEAD_S + 120, log)
        ctx.close()
    turn = handsfree_turns(live_app.data_dir)[-1]
    assert turn["error"] is None and turn["transcript_heard"] and turn["response"]
    assert "capital" in turn["transcript_heard"].lower()  # the question, heard through the browser and the VAD cut
    assert 0 < turn["question_end_ttft_s"] < turn["first_audio_s"] < 60
    print(f"\nhands-free, {turn['model']}: heard {turn['transcript_heard']!r}; end of speech -> first token "
          f"{turn['question_end_ttft_s']:.2f} s, -> first audio {turn['first_audio_s']:.2f} s, "
          f"engine TTFT {turn['ttft_s']:.2f} s, answer {turn['new_tokens']} tokens in {turn['total_s']:.2f} s")
