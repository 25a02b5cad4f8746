"""No speech, no answer: noise, tones and hum are refused before any model hears them
(error_code "no_speech"), the conversation untouched and the attempt logged; real speech passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blsp_demo.app.services import EnginePool, Services, load_examples
from blsp_demo.app.session import Chat, ChatSettings, ChatState, TurnFailed, UserInput
from blsp_demo.app.settings import AppSettings
from blsp_demo.app.store import Store, read_records
from blsp_demo.audio import AudioError, load_audio
from blsp_demo.engine.chat import StreamChunk
from blsp_demo.options import Response
from blsp_demo.speech_presence import SpeechDetector

SR = 16000
EXAMPLES = load_examples()


def not_speech() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    t = np.arange(int(2.0 * SR)) / SR
    return {
        "white noise": 0.3 * rng.standard_normal(len(t)),
        "chord": 0.2 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)),
        "melody": 0.4 * np.sin(2 * np.pi * np.repeat([262, 330, 392, 523], len(t) // 4 + 1)[:len(t)] * t),
        "mains hum": 0.3 * sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 6)),
    }


@pytest.fixture(scope="module")
def detector():
    return SpeechDetector()


@pytest.mark.parametrize("name", list(not_speech()))
def test_noise_tones_and_hum_are_refused(detector, name):
    with pytest.raises(AudioError) as err:
        detector.check(not_speech()[name].astype(np.float32))
    assert err.value.code == "no_speech" and "No speech" in str(err.value)


def test_spoken_examples_pass(detector):
    for ex in EXAMPLES:
        assert detector.check(load_audio(str(ex.audio))).speech_s > 0.5, ex.audio.name


class CountingEngine:
    name, model_id, revision = "cascade", "counting", "r"

    def __init__(self):
        self.seen = []

    def stream(self, conv, options):
        self.seen.append(conv)
        yield StreamChunk("ok", "ok", Response(text="ok", ttft_s=0.0, total_s=0.0, new_tokens=1, options=options))

    def forget(self, conv_id):
        pass


def test_a_noise_upload_is_refused_logged_and_leaves_the_conversation(tmp_path):
    """The 96 kHz, 6-channel noise WAV of the issue: refused; the next question is answered in the
    conversation as it was, and no model saw the noise."""
    engine = CountingEngine()
    services = Services(AppSettings(model="m", data_dir=tmp_path), EnginePool(lambda spec: engine), Store(tmp_path / "d"))
    chat, settings = Chat(services), ChatSettings("m")
    noise = tmp_path / "noise.wav"
    sf.write(noise, 0.3 * np.random.default_rng(0).standard_normal((2 * 96000, 6)), 96000)
    state = ChatState()
    for step in chat.answer(state, settings, UserInput(text="hello")):
        state = step.state
    before = state
    with pytest.raises(TurnFailed, match="No speech"):
        for step in chat.answer(state, settings, UserInput(audio=str(noise))):
            state = step.state
    assert state == before and len(engine.seen) == 1  # the engine never heard the noise
    failed = [r for r in read_records(tmp_path / "d").records if r["kind"] == "turn"][-1]
    assert failed["error_code"] == "no_speech" and failed["audio_sha256"] and failed["audio_channels"] == 6
    for step in chat.answer(state, settings, UserInput(text="What is the capital of France?")):
        state = step.state
    assert [t.text for t in engine.seen[-1].turns] == ["hello", "ok", "What is the capital of France?"]
