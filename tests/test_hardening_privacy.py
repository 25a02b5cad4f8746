"""Issue 20, against the real Gradio server (in this process, with the fake engine of
test_ui_handlers answering: the web layer is what is under test):
- "Delete my data" leaves no URL that still returns the voice (the upload, the chat's copy);
- questions, answers, label and vote reasons holding `<audio src>`, `<img>`, `<video>`, `<source>`,
  `<form action>`, `<iframe>`, `<link>` and CSS `url()` pointing at another host make no viewer's
  browser call that host, in any tab (headless Chromium logs every request; a second server on
  another port counts the calls it gets)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from test_hardening_round2 import unique_wav
from test_ui_handlers import FakeEngine, make_services

from blsp_demo.judge.llama_server import free_port
from evaluations.reliability.origin import open_every_tab, payload
from evaluations.reliability.queue import file_urls, fn_index, queue_call

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.slow


class Counter(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802
        Counter.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def other_host():
    Counter.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def launch(tmp_path, engines):
    from blsp_demo.ui import build_demo, launch_options

    services = make_services(tmp_path / "data", engines)
    demo = build_demo(services)
    demo.launch(**launch_options(services, server_port=free_port(), prevent_thread_lock=True, quiet=True))
    return demo, services


def test_deleted_voice_is_not_served_by_any_url_afterwards(tmp_path):
    demo, services = launch(tmp_path, {"fake": FakeEngine()})
    try:
        url, session = demo.local_url.rstrip("/"), "privacy-test-session"
        config = httpx.get(url + "/config").json()
        wav = unique_wav(tmp_path / "mine")
        with open(wav, "rb") as f:
            uploaded = httpx.post(url + "/gradio_api/upload", files={"files": (wav.name, f)}).json()[0]
        sent = {"path": uploaded, "orig_name": wav.name, "meta": {"_type": "gradio.FileData"}}
        done = queue_call(url, session, fn_index(config, api_name="chat_audio"), [sent, "", None, None])
        assert done["success"], done
        urls = [f"{url}/gradio_api/file={uploaded}", *file_urls(done["output"]["data"][0])]
        before = {u: httpx.get(u).status_code for u in urls}
        assert len(urls) >= 2 and set(before.values()) == {200}, before
        done = queue_call(url, session, fn_index(config, elem_id="delete"), [None])
        status = done["output"]["data"][2]
        assert done["success"] and "1 audio files removed" in status, status
        after = {u: httpx.get(u).status_code for u in urls}
        assert 200 not in after.values(), after
        assert services.uploads.copies(_sha(wav)) == []  # nothing of it left in the cache
    finally:
        demo.close()


def _sha(path: Path) -> str:
    from blsp_demo.files import content_sha256

    return content_sha256(path)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs chromium (apt install chromium)")
def test_no_text_makes_a_viewers_browser_call_another_host(tmp_path, other_host):
    from playwright.sync_api import sync_playwright

    from test_browser import FLAGS, wait_for

    demo, services = launch(tmp_path, {"fake": FakeEngine(tokens=(payload(other_host, "answer"),))})
    store = services.store
    planted = store.append("turn", "planted", modality="text", text=payload(other_host, "old-question"),
                           response=payload(other_host, "old-answer"), model="fake", engine="cascade")
    store.label("planted", planted["id"], "reject", payload(other_host, "label-reason")[:1900])
    store.vote("planted", "A", payload(other_host, "vote-reason")[:1900], round="r1", model_a="fake",
               model_b="other", winner="fake", turn_ids=[planted["id"], planted["id"]])
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(demo.local_url))
    seen, answered, failed = [], [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            page = browser.new_page()
            page.on("request", lambda r: seen.append(r.url))  # asked for (the CSP may still block it)
            page.on("response", lambda r: answered.append(r.url))  # went out and came back
            page.on("requestfailed", lambda r: failed.append((r.url, r.failure)))
            page.goto(demo.local_url)
            page.fill("#text_in textarea", payload(other_host, "question"))
            page.keyboard.press("Enter")
            wait_for(lambda: "answer" in (page.locator("#chat .message.bot").last.text_content() or ""),
                     60, "the answer")
            open_every_tab(page)
            browser.close()
    finally:
        demo.close()
    def away(urls):
        return [u for u in urls if not u.startswith(("data:", "blob:", origin))]

    assert away(answered) == [] and Counter.hits == [], (away(answered), Counter.hits)
    left = [(u, why) for u, why in failed if u in away(seen) and "BLOCKED_BY" not in str(why).upper()
            and "ABORTED" not in str(why).upper() and str(why) != "csp"]
    assert left == [], left  # every attempt at another host was blocked by the browser, not sent
    assert len(answered) > 10  # the page did load (scripts, the queue)
    print(f"requests to another host: {len(away(seen))} attempted, all blocked; {len(Counter.hits)} arrived")
