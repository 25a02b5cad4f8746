"""Text sources and the espeak-ng corpus: cleaning rules, determinism, splits, resume, shards."""

import gzip
import itertools
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blsp_demo.train import corpus
from blsp_demo.train import text_sources as ts

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")


# --- cleaning -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("the cattle were of mixed breed", "The cattle were of mixed breed."),
    ("\u201cI am sure,\u201d said she \u2014 quite calmly.", "I am sure, said she, quite calmly."),
    ("Sorrow came--a gentle sorrow--but no", "Sorrow came, a gentle sorrow, but no."),
    ("It was   _very_ odd of him, wasn\u2019t it?", "It was very odd of him, wasn't it?"),
    ('"Oh!"--"Yes, you are right, my dear friend."', "Oh! Yes, you are right, my dear friend."),
])
def test_clean_sentence_normalizes(raw, expected):
    assert ts.clean_sentence(raw) == expected


@pytest.mark.parametrize("raw, reason", [
    ("too short to keep", "length"),
    (" ".join(["word"] * 41), "length"),
    ("the Stealth bomber made its maiden flight in 1989", "digits"),
    ("see the details at www.example.com for the full story", "url"),
    ("he paid cold cash for the TV set", "all-caps"),
    ("THIS WHOLE LINE IS SHOUTED AT YOU", "all-caps"),
    ("the caf\u00e9 au lait was excellent this morning", "non-ascii"),
    ("a frequent (or common error is using this verb", "unbalanced"),
    ("the vowel sounds in 'bate' and 'beat' are long", "unbalanced"),
    ("C++ is a language that extends the C language", "symbols"),
    ("rays...streaming perpetually from the distant sun", "fragment"),
    ("'after lunch,' she said briskly to the waiter", "no-leading-letter"),
])
def test_rejection_rules(raw, reason):
    assert ts.rejection_reason(ts.normalize_text(raw)) == reason
    assert ts.clean_sentence(raw) is None


def test_apostrophes_are_not_quotes():
    assert ts.clean_sentence("the dog's bowl was empty and they'd gone out") is not None


def test_split_sentences_keeps_abbreviations():
    text = "Mr. Weston was a man of character. He had an easy fortune! Did Mrs. Weston agree?"
    assert ts.split_sentences(text) == [
        "Mr. Weston was a man of character.", "He had an easy fortune!",
        "Did Mrs. Weston agree?"]


def test_dedupe_ignores_case_and_punctuation():
    assert ts.dedupe(["The cat sat.", "the cat sat", "THE  CAT SAT!", "A dog ran."]) == [
        "The cat sat.", "A dog ran."]


def test_shuffle_is_deterministic_and_seeded():
    items = [f"sentence {i}" for i in range(50)]
    assert ts.shuffled(items, 3) == ts.shuffled(items, 3)
    assert ts.shuffled(items, 3) != ts.shuffled(items, 4)
    assert sorted(ts.shuffled(items, 3)) == sorted(items)


def test_builtin_source_is_clean():
    sentences = ts.load_sentences("builtin")
    assert len(sentences) == 30
    assert all(ts.clean_sentence(s) == s for s in sentences)


def test_missing_source_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path))
    with pytest.raises(ts.SourceUnavailable, match="apt-get install wordnet-base"):
        ts.load_sentences("wordnet")


def test_unknown_source_is_named():
    with pytest.raises(KeyError, match="unknown text source"):
        ts.load_sentences("nope")


# --- R lazy-load reader (the Austen source), on a database built here -----------------------

def _xdr(kind, payload, attrs=None):
    flags = kind | (1 << 9 if attrs else 0)
    body = struct.pack(">i", flags) + payload
    if attrs:  # one attribute: names
        names = b"".join(_rstr(n) for n in attrs)
        body += (struct.pack(">i", 2 | 1 << 10) + struct.pack(">i", 1) + _rstr("names")
                 + struct.pack(">i", 16) + struct.pack(">i", len(attrs)) + names
                 + struct.pack(">i", 254))
    return body


def _rstr(s):
    data = s.encode()
    return struct.pack(">ii", 9 | (1 << 15), len(data)) + data


def _serialize(obj):
    header = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    return header + obj


def test_r_lazyload_reads_character_vectors(tmp_path):
    novel = _xdr(16, struct.pack(">i", 3) + b"".join(_rstr(s) for s in
                                                     ["CHAPTER I", "", "It was a fine day."]))
    blob = struct.pack(">i", len(_serialize(novel))) + zlib.compress(_serialize(novel))
    offsets = _xdr(14, struct.pack(">i", 2) + struct.pack(">dd", 0, len(blob)))
    variables = _xdr(19, struct.pack(">i", 1) + offsets, attrs=["emma"])
    index = _xdr(19, struct.pack(">i", 1) + variables, attrs=["variables"])
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(_serialize(index)))
    assert ts.r_lazyload(tmp_path / "Rdata") == {"emma": ["CHAPTER I", "", "It was a fine day."]}


@pytest.mark.parametrize("name", ["wordnet", "austen"])
def test_installed_sources(name):
    """The first 3000 texts of each source (all of them: about 54,000 sentences, 3 s)."""
    try:
        sentences = ts.clean_sentences(itertools.islice(ts.SOURCES[name].load(), 3000))
    except ts.SourceUnavailable as e:
        pytest.skip(str(e))
    assert len(sentences) >= 1500
    assert all(ts.clean_sentence(s) == s for s in sentences[:200])
    assert Path(ts.SOURCES[name].licence_file).exists()


# --- planning: determinism and splits -------------------------------------------------------

SENTENCES = [f"This is test sentence number {w} for the corpus." for w in
             "one two three four five six seven eight nine ten eleven twelve".split()]


def test_plan_is_deterministic_and_split_by_text():
    plan = corpus.plan_items(SENTENCES, seed=7, num=12, dev_num=2, test_num=3)
    assert plan == corpus.plan_items(SENTENCES, seed=7, num=12, dev_num=2, test_num=3)
    assert plan != corpus.plan_items(SENTENCES, seed=8, num=12, dev_num=2, test_num=3)
    texts = {s: {i.text for i in plan if i.split == s} for s in corpus.SPLITS}
    assert [len(texts[s]) for s in ("train", "dev", "test")] == [7, 2, 3]
    assert not (texts["train"] & texts["dev"] or texts["train"] & texts["test"]
                or texts["dev"] & texts["test"])
    variants = {s: {i.params.variant for i in plan if i.split == s} for s in corpus.SPLITS}
    assert variants["test"] <= set(corpus.HELDOUT_VARIANTS)
    assert (variants["train"] | variants["dev"]) <= set(corpus.TRAIN_VARIANTS)
    assert not set(corpus.HELDOUT_VARIANTS) & set(corpus.TRAIN_VARIANTS)


def test_more_clips_only_add_train_items():
    small = corpus.plan_items(SENTENCES, seed=0, num=8, dev_num=2, test_num=2)
    large = corpus.plan_items(SENTENCES, seed=0, num=12, dev_num=2, test_num=2)
    assert large[:len(small)] == small


def test_params_are_in_range():
    for index in range(200):
        p = corpus.sample_params(corpus.item_rng(0, "train", index), corpus.TRAIN_VARIANTS)
        assert corpus.RATE_WPM[0] <= p.rate <= corpus.RATE_WPM[1]
        assert corpus.PITCH[0] <= p.pitch <= corpus.PITCH[1]
        assert -12 <= p.gain_db <= 0
        assert (p.noise is None) == (p.snr_db is None)
        assert p.snr_db is None or 25 <= p.snr_db <= 45


def test_plan_refuses_too_few_sentences():
    with pytest.raises(ValueError, match="sentences"):
        corpus.plan_items(SENTENCES, seed=0, num=13, dev_num=1, test_num=1)


# --- real synthesis ---------------------------------------------------------------------------

def _manifests(out, suffix=""):
    return {s: (out / f"{s}{suffix}.jsonl").read_text() for s in corpus.SPLITS}


def _build(out, **kw):
    args = dict(seed=1, num=6, dev_num=1, test_num=2, source="builtin")
    return corpus.build_corpus(out, ts.load_sentences("builtin", seed=1), **(args | kw))


@needs_espeak
def test_tiny_corpus_is_real_audio_and_resumes(tmp_path):
    assert _build(tmp_path) == {"test": 2, "dev": 1, "train": 3}
    first = _manifests(tmp_path)
    records = [r for s in corpus.SPLITS for r in corpus.read_jsonl(tmp_path / f"{s}.jsonl")]
    for r in records:
        assert {"id", "audio", "reference", "transcript", "voice", "rate", "pitch",
                "duration_s", "snr_db", "split"} <= set(r)
        assert r["reference"] == r["transcript"] and not Path(r["audio"]).is_absolute()
        audio, rate = sf.read(tmp_path / r["audio"], dtype="float32")
        assert rate == 16000 and audio.ndim == 1
        assert abs(len(audio) / rate - r["duration_s"]) < 1e-3
        words = len(r["reference"].split())
        assert 0.6 * words * 60 / r["rate"] < r["duration_s"] < 3 * words * 60 / r["rate"] + 1.2
        assert 0.01 < np.abs(audio).max() <= 1.0
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("audio/*/*.flac")}
    assert len(mtimes) == 6
    _build(tmp_path)  # resume: nothing re-synthesized, identical manifests
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("audio/*/*.flac")} == mtimes
    assert _manifests(tmp_path) == first


@needs_espeak
def test_broken_file_is_redone(tmp_path):
    _build(tmp_path, num=3, dev_num=1, test_num=1)
    victim = next(tmp_path.glob("audio/train/*.flac"))
    victim.write_bytes(b"not audio")
    jobs = [(victim, "A short sentence to speak again.", corpus.sample_params(
        corpus.item_rng(0, "train", 0), corpus.TRAIN_VARIANTS))]
    assert corpus.synthesize_all(jobs) == 1 and corpus.is_valid_audio(victim)


@needs_espeak
def test_shard_union_equals_unsharded(tmp_path):
    sharded, whole = tmp_path / "sharded", tmp_path / "whole"
    for i in range(2):
        _build(sharded, shard=(i, 2))
    _build(whole)
    for split in corpus.SPLITS:
        union = [r for i in range(2) for r in corpus.read_jsonl(
            sharded / f"{split}.shard-{i}-of-2.jsonl")]
        expected = corpus.read_jsonl(whole / f"{split}.jsonl")
        assert sorted(union, key=lambda r: r["id"]) == expected
        for r in expected:  # same seed, same bytes, whichever run made them
            assert (sharded / r["audio"]).read_bytes() == (whole / r["audio"]).read_bytes()


# --- spoken questions -------------------------------------------------------------------------

def test_questions_file():
    questions = corpus.load_questions()
    assert len(questions) == 60
    assert [q["split"] for q in questions] == ["dev"] * 40 + ["test"] * 20
    assert len({q["question"].lower() for q in questions}) == 60
    for q in questions:
        assert q["question"].endswith("?") and 3 <= len(q["question"].split()) <= 14
        assert q["answers"] and all(isinstance(a, str) and a.strip() for a in q["answers"])


@needs_espeak
def test_build_questions(tmp_path):
    questions = corpus.load_questions()[39:41]  # one dev, one test
    assert corpus.build_questions(tmp_path, questions, voices=2) == {"dev": 2, "test": 2}
    dev = corpus.read_jsonl(tmp_path / "dev.jsonl")
    assert {r["transcript"] for r in dev} == {questions[0]["question"]}
    assert dev[0]["answers"] == questions[0]["answers"] and dev[0]["task"] == "qa"
    assert len({r["voice"] for r in dev}) == 2 and all(r["snr_db"] is None for r in dev)
    test = corpus.read_jsonl(tmp_path / "test.jsonl")
    assert all(r["voice"].split("+")[1] in corpus.HELDOUT_VARIANTS for r in test)


def test_cli_parses_shard_and_dev_frac():
    args = corpus.corpus_parser().parse_args(["--out", "x", "--shard", "1/4", "--dev-frac", "0.1"])
    assert args.shard == (1, 4) and args.dev_frac == 0.1
    with pytest.raises(SystemExit):
        corpus.corpus_parser().parse_args(["--out", "x", "--shard", "4/4"])
