"""The one validator for every text a person can send: questions, instructions, label and vote
reasons, names. Text arrives from the browser, from `gradio_client` and from raw queue calls, so
it may be anything JSON can carry: a lone surrogate ("\\ud800") that no encoder takes, or
megabytes. `user_text` makes it valid Unicode and refuses it (ValueError, with a message for the
person) when it is over the limit for what it is.
"""

from __future__ import annotations

MAX_TEXT_CHARS = 20_000  # a typed turn or an instruction: about 5k tokens, well inside the context
MAX_REASON_CHARS = 2_000  # a label's or a vote's reason
MAX_NAME_CHARS = 100  # an annotator's name, a persona's name
LIMITS = {"message": MAX_TEXT_CHARS, "instruction": MAX_TEXT_CHARS, "system prompt": MAX_TEXT_CHARS,
          "reason": MAX_REASON_CHARS, "name": MAX_NAME_CHARS}


def valid_text(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate (JSON can carry "\\ud800"; no encoder or tokenizer
    takes it) becomes U+FFFD; surrogate pairs sent as two halves are joined."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def user_text(text, what: str, limit: int | None = None) -> str:
    """`text` (None: "") as valid Unicode, stripped; ValueError when longer than the limit for
    `what` (one of LIMITS, or `limit`)."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(f"The {what} must be text, not {type(text).__name__}.")
    text = valid_text(text).strip()
    limit = limit if limit is not None else LIMITS[what]
    if len(text) > limit:
        raise ValueError(f"The {what} is {len(text):,} characters long; the limit is {limit:,}. "
                         "Shorten it" + (" or split it over several turns." if limit >= MAX_TEXT_CHARS else "."))
    return text


def is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
