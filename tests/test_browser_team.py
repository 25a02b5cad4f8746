"""A labelling team in a real browser (issue 17): headless Chromium, two browser contexts, two
annotators. Both label the same 20 logged answers with the keyboard through the queue (one uses
play, undo and skip too); the Dashboard shows their Cohen's kappa; the export has a row per
(answer, annotator) and the consensus; the judge button judges every answer through a local
OpenAI-compatible server (tests/judge_double.py: the judge code up to the HTTP call is real).
The answers come from the fake engine of test_ui_handlers (the model is not what is tested here).
Screenshots go to test-output/ (gitignored).

Needs apt's /usr/bin/chromium and pip's playwright (never `playwright install`)."""

from __future__ import annotations

import io
import math
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from judge_double import JudgeDouble
from test_browser import CHROMIUM, FLAGS, OUT, wait_for
from test_ui_handlers import WAV, FakeEngine, make_services

from blsp_demo.analysis.metrics import cohen_kappa
from blsp_demo.app.records import TurnRecord
from blsp_demo.app.store import read_records
from blsp_demo.ui import build_demo, launch_options

N = 20
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs chromium (apt install chromium)")]


def alice_key(i: int) -> str:
    return "r" if i % 3 == 0 else "a"


def bob_key(i: int) -> str:
    return "r" if i % 4 == 0 else "a"


@pytest.fixture
def team_app(tmp_path, monkeypatch):
    """The app (fake engines) with 20 logged answers, half spoken, and a judge server double."""
    engines = {"fake": FakeEngine(), "other": FakeEngine("other-model", "blsp", tokens=("That", " is", " wrong."))}
    services = make_services(tmp_path / "data", engines)
    for i in range(N):  # logged as the Chat tab logs them (the chat itself is tested elsewhere)
        spoken = services.store.save_audio(WAV, f"s{i}") if i % 2 == 0 else None
        services.store.write(TurnRecord(
            session=f"s{i}", conversation=f"c{i}", turn_index=0, modality="speech" if spoken else "text",
            text="" if spoken else f"Question number {i}?", transcript="What is the capital of France?" if spoken
            else None, audio_path=spoken.path if spoken else None, audio_sha256=spoken.sha256 if spoken else None,
            model="fake" if spoken else "other", engine="cascade", ttft_s=0.01, tokens_per_s=50.0,
            response="Paris is the capital." if spoken else "That is wrong."))
        time.sleep(0.002)
    with JudgeDouble() as judge:
        for k, v in {"OPENAI_BASE_URL": judge.url, "JUDGE_MODEL": "test-judge", "OPENAI_API_KEY": "",
                     "BLSP_JUDGE_CACHE": str(tmp_path / "judge-cache"), "BLSP_JUDGE_PER_MINUTE": "1200"}.items():
            monkeypatch.setenv(k, v)
        demo = build_demo(services)
        demo.launch(**launch_options(services, server_port=None, prevent_thread_lock=True, quiet=True))
        try:
            yield demo.local_url, services, judge
        finally:
            demo.close()


def sign_in(page, url: str, name: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Annotate").click()
    page.fill("#annotator_name input, #annotator_name textarea", name)
    page.click("#sign_in")
    page.locator("#queue_progress").filter(has_text=f"0 of {N}").wait_for(timeout=30000)
    page.locator("#shortcuts").click()  # focus outside any text box: the keys go to the queue


def press_and_wait(page, key: str, progress: str, note: str | None = None) -> None:
    page.keyboard.press(key)
    try:
        page.locator("#queue_progress").filter(has_text=progress).wait_for(timeout=15000)
    except Exception:
        page.screenshot(path=str(OUT / "team-timeout.png"), full_page=True)
        active = page.evaluate("document.activeElement && document.activeElement.outerHTML.slice(0, 300)")
        raise AssertionError(f"key {key!r} did not lead to {progress!r}; focus on {active}") from None
    if note is not None:
        page.locator("#queue_status").filter(has_text=note).wait_for(timeout=15000)


def label_all(page, keys) -> float:
    """Label the 20 answers through the queue with the keyboard; seconds it took."""
    t0 = time.monotonic()
    for i in range(N):
        press_and_wait(page, keys(i), f"{i + 1} of {N}")
    return time.monotonic() - t0


def test_two_annotators_label_with_the_keyboard_kappa_export_and_judge(team_app):
    from playwright.sync_api import expect, sync_playwright

    url, services, judge = team_app
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            alice = browser.new_context(viewport={"width": 1280, "height": 1100}).new_page()
            bob = browser.new_context(viewport={"width": 1280, "height": 1100}).new_page()
            errors: list[str] = []
            for page in (alice, bob):
                page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            sign_in(alice, url, "alice")
            expect(alice.locator("#queue_info")).to_contain_text("your label: **none**".replace("**", ""))
            alice.screenshot(path=str(OUT / "team-queue-start.png"), full_page=True)

            # play the question (P), label the first answer, undo it (U), skip (S), then label all
            first_info = alice.locator("#queue_info").inner_text()
            clock = alice.locator("#queue_audio time#time")
            expect(alice.locator("#queue_audio time#duration")).to_have_text("0:03")  # the audio is loaded
            assert clock.inner_text() == "0:00"
            alice.keyboard.press("p")  # plays the question
            wait_for(lambda: clock.inner_text() != "0:00", 10, "the question to play")
            press_and_wait(alice, "a", f"1 of {N}")
            press_and_wait(alice, "u", f"0 of {N}", "Took back")
            assert alice.locator("#queue_info").inner_text() == first_info  # back on the same answer
            press_and_wait(alice, "s", "1 skipped")
            alice.click("#q_refresh")  # the skipped answer comes back
            alice.locator("#queue_progress").filter(has_not_text="skipped").wait_for(timeout=15000)
            alice.locator("#shortcuts").click()
            seconds_alice = label_all(alice, alice_key)
            expect(alice.locator("#queue_info")).to_contain_text("Nothing left to label")

            sign_in(bob, url, "bob")
            seconds_bob = label_all(bob, bob_key)
            bob.screenshot(path=str(OUT / "team-queue-done.png"), full_page=True)
            print(f"\nlabelling {N} answers with the keyboard: alice {seconds_alice:.1f} s, bob {seconds_bob:.1f} s "
                  f"({seconds_alice / N:.2f} and {seconds_bob / N:.2f} s per answer, server round trip included)")

            # the Dashboard: their kappa
            records = read_records(services.store.data_dir).records
            by = {"alice": {}, "bob": {}}
            for r in records:
                if r["kind"] == "label" and r.get("annotator") in by:
                    by[r["annotator"]][r["turn_id"]] = r["verdict"]
            turns = sorted((r for r in records if r["kind"] == "turn"), key=lambda r: r["ts"])
            assert {t: v for t, v in by["alice"].items() if v != "unset"}.keys() == {t["id"] for t in turns}
            expected = [({"a": "accept", "r": "reject"}[alice_key(i)], {"a": "accept", "r": "reject"}[bob_key(i)])
                        for i in range(N)]
            assert [(by["alice"][t["id"]], by["bob"][t["id"]]) for t in turns] == expected  # oldest first
            kappa = cohen_kappa([a for a, _ in expected], [b for _, b in expected])
            alice.get_by_role("tab", name="Dashboard").click()
            line = alice.locator("#team_agreement")
            expect(line).to_contain_text(f"human-human: Cohen's kappa {kappa:.2f}", timeout=30000)
            expect(line).to_contain_text("alice, bob")
            assert not math.isnan(kappa)

            # the judge button, through the local OpenAI-compatible server
            alice.click("#judge_run")
            expect(alice.locator("#judge_progress")).to_contain_text(f"{N} of {N} judged", timeout=60000)
            expect(alice.locator("#judge_progress")).to_contain_text("Done")
            # one request per distinct (question, answer): the 10 spoken turns are the same pair, and
            # replies are cached by the exact request
            assert len(judge.requests) == len({(t.get("text"), t["response"]) for t in turns}) == N // 2 + 1
            alice.click("#dash_refresh")
            expect(line).to_contain_text("human-judge: Cohen's kappa", timeout=30000)
            expect(alice.locator("#agreement_table")).to_contain_text("model=other")
            alice.screenshot(path=str(OUT / "team-dashboard.png"), full_page=True)

            # the export: both rows per answer, and the consensus
            alice.get_by_role("tab", name="Annotate").click()
            alice.click("#export")
            links = alice.locator("#export_files a[href]")
            wait_for(lambda: links.count() >= 2, 30, "the two exported files")
            hrefs = {re.sub(r"-\d{8}-\d{6}\.csv$", "", Path(h.split("?")[0]).name): h
                     for h in (links.nth(k).get_attribute("href") for k in range(links.count()))}
            body = alice.request.get(hrefs["labels"]).text()
            agreement_csv = alice.request.get(hrefs["agreement"]).text()
            alice.screenshot(path=str(OUT / "team-export.png"), full_page=True)
        finally:
            browser.close()

    assert not [e for e in errors if "favicon" not in e], errors
    exported = pd.read_csv(io.StringIO(body))
    assert len(exported) == 2 * N and set(exported["annotator"]) == {"alice", "bob"}
    assert (exported.groupby("turn_id")["annotator"].nunique() == 2).all()
    kinds = exported.drop_duplicates("turn_id")["consensus_kind"].value_counts().to_dict()
    disagree = sum(a != b for a, b in expected)
    assert kinds.get("tie", 0) == disagree and kinds.get("unanimous", 0) == N - disagree
    table = pd.read_csv(io.StringIO(agreement_csv)).set_index(["scope", "comparison"])
    assert math.isclose(table.loc[("all", "human-human"), "value"], kappa, abs_tol=1e-9)
    judged = [r for r in read_records(services.store.data_dir).records if r["kind"] == "judgement"]
    assert len(judged) == N and {r["annotator"] for r in judged} == {"alice"}
    assert {r["verdict"] for r in judged if r["model"] == "other"} == {"reject"}
