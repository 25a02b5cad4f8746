"""Latency of the voice assistant (issue 19) from the turn records: end of the question (the end
of speech in hands-free mode) -> first answer token, and -> first spoken reply audio."""

from __future__ import annotations

from statistics import median
from typing import Iterable


def voice_latencies(records: Iterable[dict]) -> dict:
    """Medians over the answered turns that carry the timings (deleted sessions left out):
    {"turns", "hands_free", "spoken", "ttft_s", "first_audio_s"} (None where no turn has it)."""
    records = list(records)
    deleted = {r.get("deleted_session") for r in records if r.get("kind") == "deletion"}
    turns = [r for r in records if r.get("kind") == "turn" and not r.get("error")
             and r.get("session") not in deleted and r.get("question_end_ttft_s") is not None]
    ttft = [float(r["question_end_ttft_s"]) for r in turns]
    audio = [float(r["first_audio_s"]) for r in turns if r.get("first_audio_s") is not None]
    return {"turns": len(turns), "hands_free": sum(bool(r.get("hands_free")) for r in turns), "spoken": len(audio),
            "ttft_s": median(ttft) if ttft else None, "first_audio_s": median(audio) if audio else None}


def voice_latency_markdown(records: Iterable[dict]) -> str:
    """One line for the Dashboard, or "" when no voice-assistant turn was logged."""
    v = voice_latencies(records)
    if not v["turns"]:
        return ""
    line = (f"Voice assistant: {v['turns']} timed turns ({v['hands_free']} hands-free); median end of speech "
            f"\u2192 first token **{v['ttft_s']:.2f} s**")
    if v["first_audio_s"] is not None:
        line += f", \u2192 first spoken audio **{v['first_audio_s']:.2f} s** ({v['spoken']} spoken)"
    return line + "."
