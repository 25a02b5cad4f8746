"""A real browser against the real app: headless Chromium with a fake microphone that plays a
spoken question (espeak-ng). Record, get a streamed answer from the real model, type a follow-up,
thumbs up and down, then find the turn and label records in the data dir. Then a Compare round
(a spoken example to two anonymous systems, a vote) and its ranking on the Dashboard. Screenshots
go to test-output/ (gitignored).

Needs apt's /usr/bin/chromium and pip's playwright (never `playwright install`)."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from blsp_demo.engine.registry import DEFAULT_MODEL, REGISTRY
from blsp_demo.app.store import read_records

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"
OUT = ROOT / "test-output"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream"]
RECORD_MS = 4500

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs chromium (apt install chromium)")]


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    """The question, slowly (the browser's audio processing blurs 120+ wpm espeak for Whisper base),
    then silence: Chromium loops the file while the recorder runs."""
    folder = tmp_path_factory.mktemp("mic")
    raw, out = folder / "raw.wav", folder / "question_then_silence.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "100", "-w", str(raw), QUESTION], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), "-ar", "16000", "-ac", "1",
                    "-af", "apad=pad_dur=5", str(out)], check=True)
    return out


def wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def test_browser_speak_type_and_label(live_app, mic_wav):
    from playwright.sync_api import expect, sync_playwright

    OUT.mkdir(exist_ok=True)
    before = {r["id"] for r in read_records(live_app.data_dir).records}
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-"), executable_path=str(CHROMIUM), headless=True,
            args=[*FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}"], viewport={"width": 1280, "height": 1000})
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            errors: list[str] = []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(live_app.url)
            page.wait_for_selector("#mic button.record-button", timeout=60000)
            bots = page.locator("#chat .message.bot")
            status = page.locator("#status")

            partials: list[tuple[float, str]] = []  # (seconds after the send, answer text so far)

            def wait_answer(n: int, t0: float) -> dict:
                """Until the n-th new turn is logged and its whole answer is on the page."""
                def done():
                    text = bots.nth(n - 1).inner_text().strip() if bots.count() >= n else ""
                    if text and (not partials or partials[-1][1] != text):
                        partials.append((time.monotonic() - t0, text))
                    logged = new_turns()
                    return (len(logged) >= n and text == logged[n - 1]["response"].strip()
                            and "first token" in status.inner_text() and logged[n - 1])
                return wait_for(done, 180, f"answer {n}")

            def new_turns() -> list[dict]:
                return [r for r in read_records(live_app.data_dir).records if r["id"] not in before
                        and r["kind"] == "turn"]

            # ---- a spoken question through the microphone
            page.click("#mic button.record-button")
            page.wait_for_timeout(RECORD_MS)
            page.click("#mic button.stop-button")
            speech = wait_answer(1, time.monotonic())
            print(f"\nbrowser: first answer text {partials[0][0]:.2f} s after stop (upload + ASR + LLM), "
                  f"whole answer {partials[-1][0]:.2f} s; {len(partials)} partial renders")
            heard = speech["transcript_heard"].lower()  # through the browser's audio processing: not bit-exact
            assert "capital" in heard and "france" in heard, heard
            answer = speech["response"]
            assert "paris" in answer.lower() and len(answer.split()) <= 40, speech  # correct and short
            assert len(partials) >= 2, f"the answer did not stream: {partials}"
            assert page.locator("#chat audio").count() >= 1  # the question as a player

            # ---- a typed follow-up
            page.fill("#text_in textarea", "What language do people speak there?")
            page.press("#text_in textarea", "Enter")
            wait_answer(2, time.monotonic())

            # ---- thumbs up on the first answer, down on the second (labels flip to Liked/Disliked)
            likes = page.locator('#chat button[aria-label="Like"], #chat button[aria-label="Liked"]')
            dislikes = page.locator('#chat button[aria-label="Dislike"], #chat button[aria-label="Disliked"]')
            page.fill("#reason textarea", "right city")
            likes.nth(0).click()
            expect(status).to_contain_text("accept", timeout=15000)
            dislikes.nth(1).click()
            expect(status).to_contain_text("reject", timeout=15000)

            # ---- a spoken example from the gallery
            page.locator("#examples").get_by_text("largest planet").click()
            planet = wait_answer(3, time.monotonic())
            assert planet["transcript"] == "What is the largest planet in our solar system?"
            expect(page.locator('#chat button[aria-label="Liked"]')).to_have_count(1, timeout=10000)  # still shown
            expect(page.locator('#chat button[aria-label="Disliked"]')).to_have_count(1)
            page.screenshot(path=str(OUT / "browser-chat.png"), full_page=True)

            page.get_by_role("tab", name="Annotate").click()
            expect(page.locator("#answers")).to_contain_text("What language", timeout=30000)
            page.locator("#answers").get_by_text("What language").filter(visible=True).first.click()
            expect(page.locator("#annotate_info")).to_contain_text(DEFAULT_MODEL, timeout=15000)
            page.screenshot(path=str(OUT / "browser-annotate.png"), full_page=True)
            page.get_by_role("tab", name="Dashboard").click()
            page.wait_for_timeout(4000)
            page.screenshot(path=str(OUT / "browser-dashboard.png"), full_page=True)
        finally:
            ctx.close()

    new = [r for r in read_records(live_app.data_dir).records if r["id"] not in before]
    turns = [r for r in new if r["kind"] == "turn"]
    labels = [r for r in new if r["kind"] == "label"]
    assert [t["modality"] for t in turns] == ["speech", "text", "speech"] and len({t["session"] for t in new}) == 1
    speech, text, _ = turns
    print(f"browser spoken turn: ttft {speech['ttft_s']:.2f} s (app {speech['app_ttft_s']:.2f} s), "
          f"heard {speech['transcript_heard']!r}, audio {speech['audio_duration_s']} s at "
          f"{speech['audio_sample_rate']} Hz")
    assert (live_app.data_dir / speech["audio_path"]).is_file() and speech["audio_sample_rate"] in (44100, 48000)
    assert 2.5 < speech["audio_duration_s"] < RECORD_MS / 1000 + 1  # a busy machine starts recording late
    assert [(lab["turn_id"], lab["verdict"], lab["reason"]) for lab in labels] == \
        [(speech["id"], "accept", "right city"), (text["id"], "reject", "")]
    assert not [e for e in errors if "favicon" not in e], errors


def test_browser_compare_round_with_a_vote(live_app):
    """Compare: a spoken example to two anonymous systems, both answers streaming side by side,
    a vote with a reason, the reveal; then the ranking on the Dashboard."""
    from playwright.sync_api import expect, sync_playwright

    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 1000})
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            errors: list[str] = []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(live_app.url)
            page.get_by_role("tab", name="Compare").click()
            answers = [page.locator("#cmp_answer_a"), page.locator("#cmp_answer_b")]
            vote_a = page.locator("#vote_a")
            expect(vote_a).to_be_disabled(timeout=60000)

            t0 = time.monotonic()
            page.locator("#cmp_examples").get_by_text("capital of France").click()
            seen: list[tuple[str, str]] = []

            def answered():
                texts = (answers[0].inner_text().strip(), answers[1].inner_text().strip())
                if any(texts) and (not seen or seen[-1] != texts):
                    seen.append(texts)
                return all(texts) and vote_a.is_enabled()
            wait_for(answered, 240, "both answers")
            elapsed = time.monotonic() - t0
            page.wait_for_timeout(1000)  # the last update (an answer cut by the loop guard shrinks) may land after the buttons
            answered()
            a_text, b_text = seen[-1]
            print(f"\nbrowser compare: both answers in {elapsed:.1f} s after the click; {len(seen)} renders")
            assert len(seen) >= 3, f"the answers did not stream: {seen}"
            expect(page.locator("#cmp_head_a")).to_have_text("Model A")  # anonymous until the vote
            expect(page.locator("#cmp_question")).to_contain_text("capital of France")
            page.screenshot(path=str(OUT / "browser-compare-before-vote.png"), full_page=True)

            page.fill("#cmp_reason textarea", "names the city")
            vote_a.click()
            expect(page.locator("#cmp_reveal")).to_contain_text("Your vote: A is better", timeout=15000)
            expect(page.locator("#cmp_head_a")).to_contain_text("A: ")
            winner = re.search(r"A: (\S+)", page.locator("#cmp_head_a").inner_text()).group(1)
            assert winner in REGISTRY, winner
            expect(vote_a).to_be_disabled()
            page.screenshot(path=str(OUT / "browser-compare.png"), full_page=True)

            page.get_by_role("tab", name="Dashboard").click()
            expect(page.locator("#board")).to_contain_text(winner, timeout=30000)  # the drawn pair is random
            page.locator("#board_plot").scroll_into_view_if_needed()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(OUT / "browser-dashboard-compare.png"), full_page=True)
        finally:
            ctx.close()

    votes = [r for r in read_records(live_app.data_dir).records if r["kind"] == "vote" and r["source"] == "browser"]
    assert len(votes) == 1
    vote = votes[0]
    assert vote.items() >= {"choice": "A", "reason": "names the city", "modality": "speech", "drawn": "random",
                            "question": "What is the capital of France?"}.items()
    assert vote["winner"] == vote["model_a"] == winner and {vote["model_a"], vote["model_b"]} <= set(REGISTRY)
    assert [t["response"].strip() for t in vote["turns"]] == [a_text, b_text]
    assert not [e for e in errors if "favicon" not in e], errors
