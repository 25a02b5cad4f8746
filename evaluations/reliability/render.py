"""Hostile text in a real browser: HTML, script, iframes and markdown images typed into the chat must
render inert. Headless Chromium (apt's /usr/bin/chromium through pip's playwright) types each text
into the Chat tab of the running app; a tracker on loopback counts every request the page makes to
it. Inert means: no script ran (`window.__pwned` unset, no dialog), no request reached the tracker
(images from elsewhere are blocked by the app's Content-Security-Policy), no script or iframe
element inside the chat, and the question itself still shows as text.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
VISIBLE = "What is the capital of France?"


def hostile_texts(tracker: str) -> list[str]:
    return [
        f'<script>window.__pwned=1;alert(1)</script><img src="{tracker}/img.png" onerror="window.__pwned=2"> {VISIBLE}',
        f"![pixel]({tracker}/pixel.png?who=you) {VISIBLE}",
        f'<iframe src="javascript:parent.__pwned=3"></iframe><a href="javascript:window.__pwned=4">x</a>'
        f'<svg onload="window.__pwned=5"></svg> {VISIBLE}',
    ]


class Tracker:
    """Counts requests from the page (a tracking pixel would be one)."""

    def __init__(self):
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class RenderResult:
    texts: int
    answered: int
    pwned: object  # window.__pwned after all texts (None: no script ran)
    dialogs: list[str]
    tracker_hits: list[str]
    live_elements: int  # script / iframe / object / embed elements inside the chat
    question_shown: bool
    user_messages: list[str] = field(default_factory=list)  # as the page shows them
    problems: list[str] = field(default_factory=list)


def run_render(url: str, timeout_s: float = 180) -> RenderResult:
    from playwright.sync_api import sync_playwright

    tracker = Tracker()
    texts = hostile_texts(tracker.url)
    dialogs: list[str] = []
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="chromium-"),
                                                       executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.goto(url)
                page.wait_for_selector("#text_in textarea", timeout=60000)
                answered = send_all(page, texts, timeout_s)
                page.wait_for_timeout(1500)  # a late image load or script would show by now
                pwned = page.evaluate("() => window.__pwned === undefined ? null : window.__pwned")
                live = page.locator("#chat script, #chat iframe, #chat object, #chat embed").count()
                users = [t.strip() for t in page.locator("#chat .message.user").all_inner_texts()]
            finally:
                ctx.close()
    finally:
        tracker.close()
    result = RenderResult(len(texts), answered, pwned, dialogs, list(tracker.hits), live,
                          sum(VISIBLE in u for u in users) >= len(texts), users)
    result.problems = render_problems(result)
    return result


def send_all(page, texts: list[str], timeout_s: float) -> int:
    """Type each text and wait for its answer; returns how many were answered. A submit while the
    previous event is still finishing is ignored by the page (Gradio's trigger_mode "once"), so a
    text whose question does not show up is typed again."""
    users, bots = page.locator("#chat .message.user"), page.locator("#chat .message.bot")
    for i, text in enumerate(texts, start=1):
        deadline = time.monotonic() + timeout_s
        while users.count() < i:
            if time.monotonic() > deadline:
                return i - 1
            page.fill("#text_in textarea", text)
            page.press("#text_in textarea", "Enter")
            page.wait_for_timeout(1000)
        while bots.count() < i or "first token" not in page.locator("#status").inner_text():
            if time.monotonic() > deadline:
                return i - 1
            page.wait_for_timeout(100)
    return len(texts)


def render_problems(r: RenderResult) -> list[str]:
    out = []
    if r.answered != r.texts:
        out.append(f"{r.answered} of {r.texts} hostile texts were answered")
    if r.pwned is not None or r.dialogs:
        out.append(f"a script ran: __pwned={r.pwned!r}, dialogs={r.dialogs}")
    if r.tracker_hits:
        out.append(f"the page fetched from elsewhere: {r.tracker_hits}")
    if r.live_elements:
        out.append(f"{r.live_elements} script/iframe/object elements in the chat")
    if not r.question_shown:
        out.append(f"the question was not shown as text: {r.user_messages}")
    return out
