"""Every vocabulary the records, the judge and the views share, defined once."""

from __future__ import annotations

# What an answer is judged to be, by a person or by the LLM judge.
ACCEPT, REJECT = "accept", "reject"
VERDICTS = (ACCEPT, REJECT)
UNSET = "unset"  # a person retracts their label (clicking the same thumb again)
LABEL_VERDICTS = (*VERDICTS, UNSET)
UNJUDGED = "unjudged"  # the judge gave no usable verdict (the reason says why)
JUDGE_VERDICTS = (*VERDICTS, UNJUDGED)

# A Compare round's vote.
VOTE_CHOICES = ("A", "B", "tie", "both_bad")

MODALITIES = ("speech", "text")

RECORD_KINDS = ("turn", "label", "judgement", "vote", "deletion", "rejected")

# Why a turn failed (`error_code` of a turn record). Audio problems first (`audio.AudioError`).
AUDIO_ERROR_CODES = ("empty", "too_short", "silent", "nonfinite", "unreadable", "too_long", "not_found",
                     "no_speech")
ERROR_CODES = (*AUDIO_ERROR_CODES, "rate_limited", "cancelled", "too_large", "busy", "deleted",
               "not_saved", "superseded")

# How an answer ended (`finish_reason`).
FINISH_REASONS = ("stop", "length", "loop")
