"""Evaluation metrics: small pure functions, and registries keyed by name.

A corpus metric is split in two: per-item sufficient statistics (`Metric.item_stats`, a tuple of
numbers) and a score computed from their sum (`Metric.score`). The corpus score, the bootstrap
interval and per-subset scores then all come from the same numbers: WER is (errors, reference
words) summed over items, BLEU is sacrebleu's n-gram counts summed over items, accuracy is
(correct, 1). Resampling items and re-summing their statistics is the standard corpus-level
bootstrap (Koehn 2004), and it is cheap.

    >>> corpus_score("wer", ["the cat sat"], ["the cat sat on the mat"])
    50.0

Agreement between raters (a human and a judge) is `cohen_kappa` and `confusion_matrix`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

Stats = tuple[float, ...]

N_BOOTSTRAP = 1000  # resamples: the 2.5th and 97.5th percentiles move by < 0.3 points past this
CONFIDENCE = 0.95


# ---- text normalization ---------------------------------------------------------------------
@lru_cache(maxsize=1)
def _english_normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_english(text: str) -> str:
    """Whisper's English normalizer ("Mr." -> "mister", "twenty-five" -> "25", no punctuation),
    the normalization behind the WER numbers of Whisper and of the BLSP paper."""
    return _english_normalizer()(text or "")


def canonical(text: str) -> str:
    """Lowercase, accents and punctuation dropped, whitespace collapsed: for comparing labels."""
    text = unicodedata.normalize("NFKD", str(text or "")).encode("ascii", "ignore").decode()
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)  # AddToPlaylist -> Add To Playlist
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


# ---- per-item statistics ----------------------------------------------------------------------
def word_errors(reference: str, hypothesis: str) -> Stats:
    """(substitutions + deletions + insertions, reference words) after `normalize_english`."""
    import jiwer

    ref, hyp = normalize_english(reference), normalize_english(hypothesis)
    n_ref = len(ref.split())
    if n_ref == 0:  # jiwer refuses an empty reference: every hypothesis word is an insertion
        return (float(len(hyp.split())), 0.0)
    out = jiwer.process_words(ref, hyp)
    return (float(out.substitutions + out.deletions + out.insertions), float(n_ref))


def label_match(prediction: str, reference: str) -> Stats:
    """(1 if the labels agree after `canonical`, 1)."""
    return (float(canonical(prediction) == canonical(reference) != ""), 1.0)


def answer_match(prediction: str, answers: str | Sequence[str]) -> Stats:
    """(1 if any accepted answer occurs in the prediction as whole words, 1), both normalized
    with `normalize_english` (so "seven" and "7" compare equal)."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    said = f" {normalize_english(prediction)} "
    hit = any(a.strip() and f" {normalize_english(a)} " in said for a in answers)
    return (float(hit), 1.0)


def verdict_stats(verdict: str, _reference=None) -> Stats:
    """(accepted, judged): an unjudged row counts in neither, so it cannot pass for a reject."""
    return {"accept": (1.0, 1.0), "reject": (0.0, 1.0)}.get(verdict, (0.0, 0.0))


def _ratio_percent(stats) -> float:
    return 100.0 * stats[0] / stats[1] if stats[1] else math.nan


@lru_cache(maxsize=8)
def _sacrebleu(kind: str, target_lang: str = ""):
    from sacrebleu.metrics import BLEU, CHRF

    if kind == "bleu":  # 13a tokenization, except the languages sacrebleu tokenizes its own way
        return BLEU(trg_lang=target_lang) if target_lang in ("zh", "ja", "ko") else BLEU()
    return CHRF()


def _sacre_item(kind: str) -> Callable[[str, str], Stats]:
    def stats(prediction: str, reference: str) -> Stats:
        row = _sacrebleu(kind)._extract_corpus_statistics([prediction or ""], [[reference or ""]])[0]
        return tuple(float(x) for x in row)
    return stats


def _sacre_score(kind: str) -> Callable[[Sequence[float]], float]:
    def score(stats) -> float:
        return float(_sacrebleu(kind)._compute_score_from_stats([int(round(x)) for x in stats]).score)
    return score


def sacrebleu_signature(kind: str) -> str:
    """sacrebleu's signature for the scores here, e.g. `nrefs:1|case:mixed|eff:no|tok:13a|...`."""
    return f"{kind.upper()}|{_sacrebleu(kind).get_signature()}"


# ---- the registry -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    name: str
    title: str  # column title in tables
    item_stats: Callable[..., Stats]  # (prediction, reference) -> statistics of one item
    score: Callable[[Sequence[float]], float]  # summed statistics -> the corpus score
    higher_is_better: bool
    signature: Callable[[], str] | None = None


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("wer", "WER (%)", lambda prediction, reference: word_errors(reference, prediction), _ratio_percent, higher_is_better=False,
           signature=lambda: "WER after whisper.normalizers.EnglishTextNormalizer, jiwer alignment"),
    Metric("bleu", "BLEU", _sacre_item("bleu"), _sacre_score("bleu"), higher_is_better=True,
           signature=lambda: sacrebleu_signature("bleu")),
    Metric("chrf", "chrF", _sacre_item("chrf"), _sacre_score("chrf"), higher_is_better=True,
           signature=lambda: sacrebleu_signature("chrf")),
    Metric("accuracy", "Acc (%)", label_match, _ratio_percent, higher_is_better=True),
    Metric("answer_match", "Answer match (%)", answer_match, _ratio_percent, higher_is_better=True),
    Metric("accept_rate", "Accept (%)", verdict_stats, _ratio_percent, higher_is_better=True),
    # a model's points per pairwise vote: 1 won, 1/2 tie, 0 lost (see ranking.py)
    Metric("win_rate", "Win rate (%)", lambda points, _reference=None: (float(points), 1.0), _ratio_percent,
           higher_is_better=True),
]}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]


def item_stats(name: str, predictions: Sequence, references: Sequence) -> np.ndarray:
    """(N, k) statistics of N items."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    metric = get_metric(name)
    return np.array([metric.item_stats(p, r) for p, r in zip(predictions, references)], dtype=np.float64)


def score_from_stats(name: str, stats: np.ndarray) -> float:
    stats = np.asarray(stats, dtype=np.float64)
    return get_metric(name).score(stats.sum(axis=0)) if len(stats) else math.nan


def corpus_score(name: str, predictions: Sequence, references: Sequence) -> float:
    return score_from_stats(name, item_stats(name, predictions, references))


def bootstrap_interval(name: str, stats: np.ndarray, n_resamples: int = N_BOOTSTRAP, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus score: resample items with replacement,
    re-sum their statistics. Seeded, so the same items give the same interval."""
    stats = np.asarray(stats, dtype=np.float64)
    n = len(stats)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    score = get_metric(name).score
    values = []
    for start in range(0, n_resamples, 100):  # (chunk, N) draws at a time keep memory flat
        draws = rng.integers(0, n, size=(min(100, n_resamples - start), n))
        for row in draws:
            values.append(score(np.bincount(row, minlength=n) @ stats))
    values = np.array([v for v in values if not math.isnan(v)])
    if len(values) == 0:
        return (math.nan, math.nan)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return (float(lo), float(hi))


# ---- labels -----------------------------------------------------------------------------------
def normalize_label(text: str, labels: Sequence[str], synonyms: dict[str, Sequence[str]] | None = None) -> str | None:
    """The one label a free-text answer names, or None when it names none or several.

    A label is found by its canonical words ("AddToPlaylist" also as "add to playlist") or any
    of its synonyms, matched as whole words; when several are named, the one that comes first
    wins only if the answer starts with it ("Positive. Not negative at all" -> positive).
    """
    said = f" {canonical(text)} "
    found: dict[str, int] = {}
    for label in labels:
        names = [label, *((synonyms or {}).get(label, ()))]
        for name in names:
            key = canonical(name)
            pos = said.find(f" {key} ") if key else -1
            if pos >= 0:
                found[label] = min(pos, found.get(label, pos))
    if len(found) == 1:
        return next(iter(found))
    if found:
        first = min(found, key=found.get)
        if found[first] == 0 and sorted(found.values())[1] > 0:
            return first
    return None


def accuracy(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Percentage of predicted labels equal to the reference (None, no label, is wrong)."""
    return corpus_score("accuracy", [p or "" for p in predictions], references)


# ---- raters -----------------------------------------------------------------------------------
def accept_rate(verdicts: Sequence[str]) -> tuple[float, int, int]:
    """(accept rate in %, judged, unjudged): rows the judge could not judge are left out of the
    rate and counted apart."""
    counts = Counter(verdicts)
    judged = counts["accept"] + counts["reject"]
    rate = 100.0 * counts["accept"] / judged if judged else math.nan
    return rate, judged, len(verdicts) - judged


def confusion_matrix(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None) -> list[list[int]]:
    """Counts of (a = labels[i], b = labels[j]) in row i, column j."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} ratings against {len(b)}")
    labels = list(labels) if labels is not None else sorted(set(a) | set(b))
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for x, y in zip(a, b):
        if x in index and y in index:
            matrix[index[x]][index[y]] += 1
    return matrix


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Cohen's kappa, (p_o - p_e) / (1 - p_e); nan when undefined (no items, or chance
    agreement is certain because both raters gave one and the same label throughout)."""
    matrix = np.array(confusion_matrix(a, b, labels), dtype=np.float64)
    n = matrix.sum()
    if n == 0:
        return math.nan
    observed = np.trace(matrix) / n
    expected = float((matrix.sum(axis=1) / n) @ (matrix.sum(axis=0) / n))
    return math.nan if math.isclose(expected, 1.0) else float((observed - expected) / (1 - expected))


AGREEMENT: dict[str, Callable] = {"cohen_kappa": cohen_kappa, "confusion_matrix": confusion_matrix}
