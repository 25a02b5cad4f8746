"""The persona: a per-session system prompt, without the UI.

A session's persona is its conversation's `system` (None: the template's own default). It goes
into every prompt whose template has a system slot; the turn record says which persona a turn was
answered under (`TurnRecord.system_prompt`), and the engine's shared prompt-start cache is keyed by
the start's token ids, so two personas never share cached positions (`engine.cache.PrefixCaches`).
A template without a system slot (the official BLSP one) gets no persona: the turn is answered
without it and its record says None.
"""

from __future__ import annotations

from dataclasses import replace

from blsp_demo.app.text import user_text, valid_text
from blsp_demo.conversation import Conversation

DEFAULT = "default"
PRESETS: dict[str, str | None] = {  # name -> system prompt (None: the model's own default)
    DEFAULT: None,
    "concise": "You are a concise voice assistant. Answer in one or two short sentences.",
    "friendly": "You are a warm, friendly assistant. Answer kindly and simply, as if talking to a friend.",
    "tutor": "You are a patient teacher. Explain the answer step by step in plain words.",
    "pirate": "You are a pirate. Always answer like a pirate, with pirate words.",
}
PRESET_LABELS = {DEFAULT: "The model's own default", "concise": "Concise voice assistant",
                 "friendly": "Friendly", "tutor": "Patient tutor", "pirate": "Pirate"}


def persona_text(text: str | None) -> str | None:
    """What a person typed as the system prompt: None (the model's default) when blank; a
    ValueError over the text limit."""
    text = valid_text(text or "").strip()
    return user_text(text, "system prompt") or None


def with_persona(conv: Conversation, system: str | None) -> Conversation:
    """The conversation under another persona: the same turns and id, so the engine's own cache
    keeps what still matches (nothing, when the system text changed: the keys differ)."""
    return replace(conv, system=system)


def has_system_slot(template) -> bool:
    """Whether a prompt template has a place for a system prompt. One that has neither a default
    system text nor any markup around it (the official BLSP template) has none."""
    if template is None:
        return True  # an engine that does not say (a remote or fake one): pass the persona on
    return bool(template.system_default) or template.system_format.strip() != "{system}"


def for_engine(conv: Conversation, engine) -> Conversation:
    """The conversation as `engine` answers it: without a persona when its template has no slot."""
    if conv.system is not None and not has_system_slot(getattr(engine, "template", None)):
        return replace(conv, system=None)
    return conv


def describe(template, system: str | None) -> str:
    """One line for the UI: where the persona goes in this model's prompt, or that it does not."""
    if template is None:
        return "The persona is passed to the model as its system prompt."
    if not has_system_slot(template):
        return (f"This model's prompt template (`{template.name}`) has **no system slot**: the persona is not "
                "used, and answers are the same as with the default.")
    if system is None:
        default = template.system_default or "(none)"
        return f"Using the model's own system prompt (`{template.name}` template): \u201c{default}\u201d."
    return f"The persona goes into the system slot of the `{template.name}` template."
