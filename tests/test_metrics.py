"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blsp_demo.analysis import metrics as M


def test_wer_counts_deletions_after_whisper_normalization():
    assert M.word_errors("the cat sat on the mat", "the cat sat") == (3.0, 6.0)
    # "Mr." -> "mister", "twenty-five" -> "25", case and punctuation dropped
    assert M.word_errors("Mr. Smith has twenty-five colours.", "mister smith has 25 colors") == (0.0, 5.0)
    # corpus WER is total errors over total reference words, not a mean of sentence WERs:
    # (3 + 1) / (6 + 4) = 40%, where the mean of 50% and 25% would be 37.5%
    assert M.corpus_score("wer", ["the cat sat", "red green blue black"],
                          ["the cat sat on the mat", "red green blue white"]) == pytest.approx(40.0)


def test_wer_edge_cases():
    assert M.word_errors("", "hello there") == (2.0, 0.0)  # insertions against nothing
    assert M.word_errors("hello there", "") == (2.0, 2.0)
    assert math.isnan(M.corpus_score("wer", [], []))
    assert M.corpus_score("wer", ["a b c d e"], ["x"]) == pytest.approx(500.0)  # WER is not capped


def test_bleu_matches_a_hand_computed_value_and_prints_a_signature():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, same length (BP = 1): BLEU = (5/6*3/5*1/2*1/3)^(1/4)
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 2 * 1 / 3) ** 0.25
    assert M.corpus_score("bleu", ["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=0.01)
    assert M.corpus_score("bleu", ["ein kleiner Test hier"], ["ein kleiner Test hier"]) == pytest.approx(100.0)
    sig = M.METRICS["bleu"].signature()
    assert sig.startswith("BLEU|nrefs:1|") and "tok:13a" in sig and "version:" in sig


def test_bleu_and_chrf_from_summed_stats_equal_sacrebleu_corpus_scores():
    from sacrebleu.metrics import BLEU, CHRF

    hyps = ["der Hund läuft schnell", "ich trinke gern Kaffee am Morgen", "Guten Tag"]
    refs = ["der Hund rennt schnell", "am Morgen trinke ich gern Kaffee", "Guten Abend"]
    assert M.corpus_score("bleu", hyps, refs) == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
    assert M.corpus_score("chrf", hyps, refs) == pytest.approx(CHRF().corpus_score(hyps, [refs]).score)
    assert M.corpus_score("chrf", ["abc"], ["abc"]) == pytest.approx(100.0)
    assert M.corpus_score("chrf", ["xyz"], ["abc"]) == pytest.approx(0.0)


def test_label_normalization():
    labels = ["positive", "negative", "neutral"]
    assert M.normalize_label("Positive.", labels) == "positive"
    assert M.normalize_label("The sentiment of this text is negative", labels) == "negative"
    assert M.normalize_label("Neutral - it is neither positive nor negative", labels) == "neutral"  # leads
    assert M.normalize_label("It could be positive or negative", labels) is None  # several, none leads
    assert M.normalize_label("I don't know", labels) is None
    intents = ["AddToPlaylist", "GetWeather", "PlayMusic"]
    assert M.normalize_label("The intent is: get weather", intents) == "GetWeather"
    assert M.normalize_label("addtoplaylist", intents) is None  # glued words are not the label's words
    assert M.normalize_label("forecast", intents, {"GetWeather": ["weather forecast", "forecast"]}) == "GetWeather"
    assert M.accuracy(["GetWeather", None, "PlayMusic", "PlayMusic"],
                      ["GetWeather", "PlayMusic", "PlayMusic", "AddToPlaylist"]) == pytest.approx(50.0)


def test_answer_match_uses_whole_normalized_words():
    assert M.answer_match("There are 7 days in a week.", ["seven", "7"]) == (1.0, 1.0)
    assert M.answer_match("It has seven days.", ["seven", "7"]) == (1.0, 1.0)
    assert M.answer_match("Parisian food is great", ["Paris"]) == (0.0, 1.0)


def test_accept_rate_leaves_unjudged_rows_out():
    rate, judged, unjudged = M.accept_rate(["accept", "reject", "accept", "unjudged", "accept"])
    assert (rate, judged, unjudged) == (pytest.approx(75.0), 4, 1)
    assert M.corpus_score("accept_rate", ["accept", "unjudged", "reject"], [None] * 3) == pytest.approx(50.0)
    assert math.isnan(M.accept_rate(["unjudged"])[0])


def test_cohen_kappa_and_confusion_matrix_by_hand():
    human = ["accept", "accept", "reject", "reject"]
    judge = ["accept", "reject", "reject", "reject"]
    # p_o = 3/4; p_e = 1/2 * 1/4 + 1/2 * 3/4 = 1/2; kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2
    assert M.cohen_kappa(human, judge) == pytest.approx(0.5)
    assert M.confusion_matrix(human, judge, ["accept", "reject"]) == [[1, 1], [0, 2]]
    assert M.cohen_kappa(human, human) == pytest.approx(1.0)
    assert M.cohen_kappa(["accept", "reject"], ["reject", "accept"]) == pytest.approx(-1.0)
    assert math.isnan(M.cohen_kappa(["accept"] * 3, ["accept"] * 3))  # chance agreement is certain
    assert math.isnan(M.cohen_kappa([], []))


def test_bootstrap_interval_is_seeded_and_brackets_the_score():
    stats = M.item_stats("accuracy", ["a"] * 30 + ["b"] * 70, ["a"] * 100)
    lo, hi = M.bootstrap_interval("accuracy", stats, seed=0)
    assert (lo, hi) == M.bootstrap_interval("accuracy", stats, seed=0)
    assert lo < 30.0 < hi
    # binomial standard error sqrt(.3 * .7 / 100) = 4.6 points: the 95% interval is about +-9
    assert 18 < lo < 25 and 35 < hi < 42
    same = np.tile([[2.0, 4.0]], (10, 1))  # every item identical: no spread at all
    assert M.bootstrap_interval("wer", same) == (pytest.approx(50.0), pytest.approx(50.0))
    assert all(math.isnan(x) for x in M.bootstrap_interval("wer", np.zeros((0, 2))))


def test_registry_is_keyed_by_name():
    assert {"wer", "bleu", "chrf", "accuracy", "accept_rate", "answer_match"} <= set(M.METRICS)
    assert not M.get_metric("wer").higher_is_better and M.get_metric("bleu").higher_is_better
    with pytest.raises(ValueError, match="unknown metric"):
        M.get_metric("rouge")
