"""The embedded default answers for real, and a bad turn does not poison the next one (slow: the
real app on the real offline default model, through its public API)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


def ask(client: Client, text: str) -> dict:
    return client.predict(text, api_name="/chat_text")[1]


def test_a_refused_upload_leaves_the_next_answer_as_in_a_fresh_conversation(live_app, tmp_path):
    noise = tmp_path / "noise.wav"  # the upload of the issue: 2 s of 96 kHz, 6-channel noise
    sf.write(noise, 0.3 * np.random.default_rng(0).standard_normal((2 * 96000, 6)), 96000)
    client = Client(live_app.url, verbose=False)
    ask(client, "Hello!")
    with pytest.raises(Exception, match="No speech"):
        client.predict(handle_file(str(noise)), "", api_name="/chat_audio")
    client.predict(api_name="/reset")
    after = ask(client, QUESTION)
    fresh = ask(Client(live_app.url, verbose=False), QUESTION)
    assert after["response"] == fresh["response"] and "paris" in fresh["response"].lower()


def test_after_an_accepted_nonsense_turn_the_next_question_is_answered(live_app, tmp_path):
    gibberish = tmp_path / "gibberish.wav"  # speech, so it is accepted, but it means nothing
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(gibberish),
                    "blorp zindle quaffy marnix tootle weebing"], check=True)
    client = Client(live_app.url, verbose=False)
    _, heard, _, _ = client.predict(handle_file(str(gibberish)), "", api_name="/chat_audio")
    assert heard["response"].strip()
    answer = ask(client, QUESTION)
    assert "paris" in answer["response"].lower(), answer
    assert answer["new_tokens"] < 120  # no loop to max_new_tokens
