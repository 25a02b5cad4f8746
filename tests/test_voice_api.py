"""The `/system` endpoint against the app on a tiny random model (chatml template), driven by
gradio_client: a persona changes the answer, is recorded in the turn, and two sessions with
different personas share no cached positions (the same persona does share its prompt start)."""

from __future__ import annotations

import pytest
from conftest import free_port
from gradio_client import Client

from blsp_demo.app.records import TurnRecord
from blsp_demo.app.store import read_records

QUESTION = "what is the capital of france?"
PIRATE = "You are a pirate. Always answer like a pirate."


@pytest.fixture(scope="module")
def tiny_app(official_checkpoint, tmp_path_factory):
    """The real app over a tiny random BLSP checkpoint answering in the chatml template (greedy)."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from blsp_demo.app.services import EnginePool, Services, load_examples
    from blsp_demo.app.settings import AppSettings
    from blsp_demo.app.store import Store
    from blsp_demo.engine.build import blsp_engine
    from blsp_demo.model.blsp import BlspModel
    from blsp_demo.prompts import get_template
    from blsp_demo.ui import build_demo, launch_options

    model = BlspModel.from_pretrained(official_checkpoint).eval()
    tok, fx = AutoTokenizer.from_pretrained(official_checkpoint), WhisperFeatureExtractor.from_pretrained(official_checkpoint)
    engine = blsp_engine(model, tok, fx, template=get_template("chatml"), model_id="tiny-chatml")
    data_dir = tmp_path_factory.mktemp("voice-api") / "data"
    settings = AppSettings(model="tiny", data_dir=data_dir, max_new_tokens=8)
    services = Services(settings, EnginePool(lambda spec: engine), Store(data_dir), load_examples(), ["tiny"])
    services.pool.get("tiny")
    demo = build_demo(services)
    demo.launch(**launch_options(services, server_port=free_port(), prevent_thread_lock=True, quiet=True))
    yield SimpleNamespace(url=demo.local_url, data_dir=data_dir, engine=engine)
    demo.close()


def ask(app, client: Client, persona: str | None) -> tuple[str, dict, str]:
    """Set the persona (None: leave it), ask; the answer, its turn record, the persona note."""
    note = client.predict(persona or "", api_name="/system") if persona is not None else ""
    _, details, _, _ = client.predict(QUESTION, api_name="/chat_text")
    return details["response"], turn_of(app, details), note


def turn_of(app, details: dict) -> dict:
    return next(r for r in read_records(app.data_dir).records if r["id"] == details["turn_id"])


def test_persona_changes_the_answer_and_never_shares_cached_positions(tiny_app):
    default_answer, first, note = ask(tiny_app, Client(tiny_app.url, verbose=False), "")
    assert "own default" in note and "chatml" in note
    pirate_answer, pirate, note = ask(tiny_app, Client(tiny_app.url, verbose=False), PIRATE)
    assert PIRATE in note and "system slot" in note
    again_answer, again, _ = ask(tiny_app, Client(tiny_app.url, verbose=False), None)  # a third session, default persona

    assert pirate_answer != default_answer and again_answer == default_answer
    assert (first["system_prompt"], pirate["system_prompt"], again["system_prompt"]) == (None, PIRATE, None)
    # session 1 filled the shared start of the default persona; the pirate session shares none of it
    assert first["cached_tokens"] == 0 and pirate["cached_tokens"] == 0
    assert again["cached_tokens"] > 0  # the same persona does reuse the shared start (the control)
    assert len(tiny_app.engine.prefixes) == 2  # one prompt start per persona
    assert TurnRecord.from_json(pirate).extra == {}  # every field of the turn is a named one


def test_system_prompt_over_the_limit_is_refused_and_the_persona_stays(tiny_app):
    from gradio_client.exceptions import AppError

    client = Client(tiny_app.url, verbose=False)
    client.predict(PIRATE, api_name="/system")
    with pytest.raises(AppError, match="system prompt is 20,001 characters"):
        client.predict("x" * 20_001, api_name="/system")
    _, details, _, _ = client.predict(QUESTION, api_name="/chat_text")
    assert turn_of(tiny_app, details)["system_prompt"] == PIRATE
    client.predict(api_name="/reset")  # a new conversation keeps the session's persona
    _, details, _, _ = client.predict(QUESTION, api_name="/chat_text")
    turn = turn_of(tiny_app, details)
    assert turn["system_prompt"] == PIRATE and turn["cached_tokens"] > 0
