"""Does any text make a viewer's browser call another host? (issue 20, defect 3) Records whose
question, answer, label reason and vote reason hold `<audio src>`, `<img>`, `<video>`, `<source>`,
`<form action>`, `<iframe>`, `<link>` and CSS `url()` pointing at a counter on another port are
written into a data dir before the app starts; headless Chromium then types one more such question
and opens every tab, logging every request the page makes."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .render import CHROMIUM, FLAGS, Tracker

TABS = ("Compare", "Annotate", "Dashboard", "Chat")


def payload(host: str, where: str) -> str:
    return (f'{where} <audio src="{host}/{where}-audio" autoplay></audio> <img src="{host}/{where}-img"> '
            f'<video src="{host}/{where}-video" autoplay></video> <audio><source src="{host}/{where}-source"></audio> '
            f'<form action="{host}/{where}-form"><button>go</button></form> <iframe src="{host}/{where}-frame"></iframe> '
            f'<link rel="stylesheet" href="{host}/{where}-css"> <span style="background:url({host}/{where}-bg)">x</span> '
            f'![m]({host}/{where}-md)')


def plant(data_dir: Path, host: str) -> None:
    """A turn, a label and a vote holding payloads, as if earlier visitors had sent them."""
    from blsp_demo.app.store import Store

    store = Store(data_dir)
    turn = store.append("turn", "planted", modality="text", text=payload(host, "old-question"),
                        response=payload(host, "old-answer"), model="micro-cascade", engine="cascade")
    store.label("planted", turn["id"], "reject", payload(host, "label-reason")[:1900])
    store.vote("planted", "A", payload(host, "vote-reason")[:1900], round="r1", model_a="micro-cascade",
               model_b="micro-text", winner="micro-cascade", turn_ids=[turn["id"], turn["id"]])
    store.close()


@dataclass
class OriginResult:
    requests: int  # every request the page made
    away_attempted: list[str]  # to another origin, asked for (the CSP may still block them)
    away_answered: list[str]  # to another origin, went out and came back
    counter_hits: list[str]  # arrived at the other host
    tabs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def run_origin(url: str, tracker: Tracker) -> OriginResult:
    """`url`'s server must have been started on a data dir `plant`ed with `tracker.url`."""
    from playwright.sync_api import sync_playwright

    raise_if_missing()
    seen, answered = [], []
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="chromium-"), executable_path=str(CHROMIUM),
                                                   headless=True, args=FLAGS)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.on("request", lambda r: seen.append(r.url))
            page.on("response", lambda r: answered.append(r.url))
            page.goto(url)
            page.wait_for_selector("#text_in textarea", timeout=60000)
            page.fill("#text_in textarea", payload(tracker.url, "question"))
            page.keyboard.press("Enter")
            page.wait_for_timeout(8000)
            open_every_tab(page)
        finally:
            ctx.close()

    def away(urls):
        return sorted({u for u in urls if not u.startswith(("data:", "blob:", origin))})

    r = OriginResult(len(seen), away(seen), away(answered), list(tracker.hits), list(TABS))
    if r.away_answered or r.counter_hits:
        r.problems.append(f"the page reached another host: {r.away_answered or r.counter_hits}")
    if len(answered) < 10:
        r.problems.append("the page did not load")
    return r


def open_every_tab(page) -> None:
    """Each tab in turn, opening a planted row where the tab lists one."""
    for tab in TABS:
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(2500)
        for text in ("old-question", "old-answer"):
            rows = page.get_by_text(text).filter(visible=True)
            if rows.count():
                rows.first.click()
                page.wait_for_timeout(1000)


def raise_if_missing() -> None:
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing (apt install chromium)")

