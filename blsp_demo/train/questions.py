"""Spoken training questions: templates over WordNet nouns and glosses, and arithmetic.

    python -m blsp_demo.train.questions --out DIR --num 1200 [--seed 0]

writes `DIR/train.jsonl` (+ audio, espeak-ng, the corpus's train voices, rates, gain and noise).
The evaluation questions (`data/spoken_questions.jsonl`, dev and test) are never produced: any
generated question whose normalized text equals one of them is dropped.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Iterator

from blsp_demo.train import corpus, text_sources

WORD_TEMPLATES = ("What is a {w}?", "What is {a} {w}?", "Can you tell me what {a} {w} is?",
                  "What does the word {w} mean?", "Define the word {w}.", "Tell me about {a} {w}.",
                  "What is {a} {w} used for?", "Is {a} {w} a kind of {h}?", "Give me an example of {a} {w}.")
GLOSS_TEMPLATES = ("What do you call {g}?", "What is the word for {g}?")
OPS = (("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b))


def normalized(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def wordnet_nouns(root: Path | None = None) -> Iterator[tuple[str, str, str]]:
    """(noun, its hypernym's first lemma or '', the gloss's first clause) for one-word lemmas."""
    path = (root or text_sources.wordnet_dir()) / "data.noun"
    lines = [l for l in path.read_text(encoding="latin-1").splitlines() if not l.startswith("  ")]
    first = {l.split(" ", 1)[0]: l.split()[4] for l in lines}
    for line in lines:
        head, _, gloss = line.partition("|")
        f = head.split()
        word, n_words = f[4], int(f[3], 16)
        ptr_at = 4 + 2 * n_words
        ptrs = f[ptr_at + 1: ptr_at + 1 + 4 * int(f[ptr_at])]
        hyper = next((first.get(ptrs[i + 1], "") for i in range(0, len(ptrs), 4) if ptrs[i] == "@"), "")
        clause = gloss.split(";")[0].strip()
        if word.isalpha() and word.islower() and 3 <= len(word) <= 12:
            yield word, hyper.replace("_", " ") if hyper.isascii() else "", clause


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_questions(num: int, seed: int = 0, exclude: set[str] = frozenset()) -> list[str]:
    """`num` distinct questions: ~70% about WordNet nouns, ~30% arithmetic."""
    rng = random.Random(seed)
    nouns = list(wordnet_nouns())
    rng.shuffle(nouns)
    out: dict[str, None] = {}
    k = 0
    while len(out) < num and k < 20 * num:
        k += 1
        if rng.random() < 0.3:
            name, op = rng.choice(OPS)
            a, b = rng.randint(1, 20), rng.randint(1, 12)
            q = rng.choice(("What is {a} {op} {b}?", "How much is {a} {op} {b}?")).format(a=a, op=name, b=b)
        else:
            w, h, g = nouns[k % len(nouns)]
            if rng.random() < 0.2 and 3 <= len(g.split()) <= 10 and re.fullmatch(r"[A-Za-z ,'-]+", g):
                q = rng.choice(GLOSS_TEMPLATES).format(g=g)
            else:
                tpl = rng.choice([t for t in WORD_TEMPLATES if h or "{h}" not in t])
                q = tpl.format(w=w, a=article(w), h=h)
        if normalized(q) not in exclude:
            out[q] = None
    return list(out)


def evaluation_questions(path: Path = corpus.QUESTIONS_FILE) -> set[str]:
    return {normalized(q["question"]) for q in corpus.load_questions(path)}


def build(out: Path, num: int, seed: int = 0, workers: int = 1) -> dict[str, int]:
    texts = make_questions(num, seed, evaluation_questions())
    items = [corpus.Item("train", i, t, corpus.sample_params(corpus.item_rng(seed, "question-train", i),
                                                             corpus.TRAIN_VARIANTS)) for i, t in enumerate(texts)]
    out.mkdir(parents=True, exist_ok=True)
    return corpus.synthesize_and_list(out, items, "flac", workers,
                                      lambda i, p: corpus.manifest_record(i, p, out, "questions"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(json.dumps(build(a.out, a.num, a.seed)))


if __name__ == "__main__":
    main()
