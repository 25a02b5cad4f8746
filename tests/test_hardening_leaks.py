"""No leaks, against the real app (a subprocess with a planted fake OPENAI_API_KEY and HF_TOKEN in its
environment): files only from its own audio and example folders, whatever path a client names; no
secret in the log, the data dir, the exports, the page, its config or any error message; hostile
text renders inert in a real browser."""

from __future__ import annotations


import pytest
from gradio_client import Client

from evaluations.reliability import leaks
from evaluations.reliability.inputs import raw_predict
from evaluations.reliability.render import CHROMIUM, run_render
from evaluations.reliability.server import close_soon

pytestmark = pytest.mark.slow


def test_path_traversal_through_every_file_taking_route_serves_nothing(hardened_app):
    Client(hardened_app.url, verbose=False).predict("Hello.", api_name="/chat_text")  # a records file exists
    probes = leaks.traversal_probes(hardened_app.url, hardened_app.data_dir)
    print("\n" + "\n".join(map(str, probes)))
    assert leaks.allowed_file_served(hardened_app.url)  # the control: the probes could have seen a file
    assert len(probes) >= 40 and not [p for p in probes if p.leaked]
    assert all(p.status != 200 for p in probes if p.route.startswith(("/gradio_api/file", "/file")))


def test_no_planted_secret_anywhere(hardened_app):
    client = Client(hardened_app.url, verbose=False)
    messages = []
    try:  # errors of every kind, so their messages can be searched too
        for args, api in ((("",), "/chat_text"), ((None, ""), "/chat_audio"), ((99, "accept", ""), "/feedback")):
            try:
                client.predict(*args, api_name=api)
            except Exception as err:  # noqa: BLE001 - the message is what is searched
                messages.append(str(err))
        messages.append(str(raw_predict(client, "chat_audio", [{"path": "/proc/self/environ",
                                                               "meta": {"_type": "gradio.FileData"}}, ""])))
        client.predict("What is my API key?", api_name="/chat_text")
    finally:
        close_soon(client)
    sources = leaks.secret_sources(hardened_app.url, hardened_app.data_dir, hardened_app.log_text(), messages)
    assert len(sources) > 8 and any(name.startswith("export") for name in sources)
    assert leaks.find_secrets(sources) == []
    # the control: the search finds a planted secret where there is one
    assert leaks.find_secrets({"planted": f"key={leaks.PLANTED_SECRETS[0]}"}) == ["planted"]


def test_chat_sanitizes_and_every_response_forbids_remote_images(hardened_app):
    assert leaks.inert_config(hardened_app.url) == []


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs chromium (apt install chromium)")
def test_hostile_text_renders_inert_in_a_real_browser(hardened_app):
    result = run_render(hardened_app.url)
    print(f"\n{result}")
    assert result.problems == []
