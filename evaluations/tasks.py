"""The evaluation tasks of the paper, as data: instruction, reference, scoring, output budget.

| task      | --task | instruction (paper Table 1 / 11, `blsp_demo.prompts.INSTRUCTIONS`)     | metrics             |
|-----------|--------|------------------------------------------------------------------------|---------------------|
| asr       | asr    | "Please repeat the following words."                                   | WER                 |
| st        | st     | "Please translate the following English text into <target> text."      | BLEU, chrF          |
| intent    | slu    | classify the intent among the manifest's label set                     | accuracy            |
| sentiment | slu    | positive / negative / neutral, one word                                | accuracy            |
| qa        | qa     | the spoken question itself (no instruction)                            | answer match, accept|

A manifest row's own `instruction` wins over the task's. Free-text answers of SLU tasks are
mapped to a label with `metrics.normalize_label` (the label's words or a synonym, as whole words).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from blsp_demo.analysis.metrics import normalize_label
from blsp_demo.prompts import instruction_text

LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
             "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ca": "Catalan"}

SNIPS_INTENTS = ("AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook",
                 "SearchCreativeWork", "SearchScreeningEvent")
SENTIMENTS = ("positive", "negative", "neutral")

# Other words an answer may name a label by (whole words, after `metrics.canonical`).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "AddToPlaylist": ("add to a playlist", "playlist"),
    "BookRestaurant": ("restaurant booking", "book a restaurant", "reservation", "restaurant"),
    "GetWeather": ("weather", "weather forecast", "forecast"),
    "PlayMusic": ("play music", "music"),
    "RateBook": ("rate a book", "book rating", "rating"),
    "SearchCreativeWork": ("search for a creative work", "creative work"),
    "SearchScreeningEvent": ("screening event", "screening", "showtimes", "movie times"),
    "positive": ("pos",), "negative": ("neg",),
}


def label_words(label: str) -> str:
    """'AddToPlaylist' -> 'add to playlist'; 'activate_lights_kitchen' -> 'activate lights kitchen'."""
    import re

    return " ".join(re.sub(r"([a-z])([A-Z])", r"\1 \2", label).replace("_", " ").lower().split())


@dataclass(frozen=True)
class Task:
    name: str
    group: str  # the --task of evaluations.run that includes it
    metrics: tuple[str, ...]
    max_new_tokens: int
    default_instruction: Callable[[dict], str]
    reference: Callable[[dict], object] = lambda row: row.get("reference", "")
    extract: Callable[[str, dict], str] = lambda text, row: text  # the prediction as scored
    labels: tuple[str, ...] = field(default=())

    def instruction(self, row: dict) -> str:
        return row["instruction"] if row.get("instruction") is not None else self.default_instruction(row)


def row_labels(row: dict, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(row.get("labels") or default)


def _intent_instruction(row: dict) -> str:
    return instruction_text("intent", labels=", ".join(label_words(x) for x in row_labels(row, SNIPS_INTENTS)))


def _label_of(default: tuple[str, ...]) -> Callable[[str, dict], str]:
    def extract(text: str, row: dict) -> str:
        labels = row_labels(row, default)
        synonyms = {x: (label_words(x), *SYNONYMS.get(x, ())) for x in labels}
        return normalize_label(text, labels, synonyms) or ""
    return extract


def _target(row: dict) -> str:
    code = row.get("target_lang") or "de"
    return LANGUAGES.get(code, code)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("asr", "asr", ("wer",), 96, lambda row: instruction_text("repeat")),
    Task("st", "st", ("bleu", "chrf"), 128, lambda row: instruction_text("translate", target=_target(row))),
    Task("intent", "slu", ("accuracy",), 24, _intent_instruction, extract=_label_of(SNIPS_INTENTS),
         labels=SNIPS_INTENTS),
    Task("sentiment", "slu", ("accuracy",), 16, lambda row: instruction_text("sentiment"),
         extract=_label_of(SENTIMENTS), labels=SENTIMENTS),
    Task("qa", "qa", ("answer_match", "accept_rate"), 96, lambda row: "",
         reference=lambda row: row.get("answers") or [row.get("reference", "")]),
]}

GROUPS = {"asr": ("asr",), "st": ("st",), "slu": ("intent", "sentiment"), "qa": ("qa",)}


def task_of(row: dict, group: str) -> Task:
    """The row's task: its own `task` when that belongs to the group, else the group's first."""
    names = GROUPS[group]
    name = row.get("task") if row.get("task") in names else names[0]
    return TASKS[name]
