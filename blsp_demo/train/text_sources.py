"""English sentences for the TTS training corpus, from texts that registry packages ship.

Nothing here downloads: every source is a file that an ordinary `apt-get install` puts on disk,
so CI and a fresh machine rebuild the same sentences. The sources, as data (`SOURCES`):

- wordnet: the example sentences of WordNet 3.0's glosses ("he ran into the house"), from Debian
  `wordnet-base`; WordNet 3.0 licence, permissive (/usr/share/doc/wordnet-base/copyright).
- austen: Jane Austen's six novels, public domain, from Debian `r-cran-janeaustenr` (package under
  MIT; /usr/share/doc/r-cran-janeaustenr/copyright).
- builtin: 30 sentences this project wrote (`data/builtin_sentences.txt`), for tests.

`load_sentences("wordnet,austen", seed=0)` splits, cleans (`clean_sentence`), dedupes
case-insensitively and shuffles deterministically. `python -m blsp_demo.train.text_sources`
prints counts and a sample. Pure standard library: no numpy, no R.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import re
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

DATA_DIR = Path(__file__).parent / "data"
MIN_WORDS = 5
MAX_WORDS = 40


class SourceUnavailable(RuntimeError):
    """A text source's files are not installed (the message says how to install them)."""


@dataclass(frozen=True)
class TextSource:
    name: str
    description: str
    licence: str
    licence_file: str  # where the licence text lies once the package is installed
    install: str  # the command that installs it
    load: Callable[[], Iterable[str]]  # raw text: sentences or whole paragraphs


# ---------------------------------------------------------------------------------------------
# Cleaning

# Spoken abbreviations that end with a period but not a sentence.
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "col", "capt", "gen", "rev", "sir", "lt", "sgt",
                 "prof", "jr", "sr", "vs", "etc", "mt", "no", "esq", "e.g", "i.e"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])")
_TRANSLATE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                            "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"',
                            "\u00bb": '"', "\u2013": " - ", "\u2014": " - ", "\u2026": "...",
                            "_": "", "*": "", "`": "'"})
_URL = re.compile(r"https?:|www\.|\w@\w|\.(com|org|net|html?)\b", re.IGNORECASE)
_ALLOWED = re.compile(r"[A-Za-z0-9 .,;:!?'()\-]+")  # anything else (/ & # = < > ...) is not prose
_DIGIT = re.compile(r"[0-9]")
_UPPER, _LETTER = re.compile(r"[A-Z]"), re.compile(r"[A-Za-z]")
_CAPS_WORD = re.compile(r"\b[A-Z]{2,}\b")
_QUOTE_OPEN = re.compile(r"(^|[\s(])'(?!(tis|twas|em|til|cause)\b)", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Split prose at . ! ? followed by a capital, except after abbreviations like 'Mr.'."""
    pieces = _SENTENCE_END.split(text.strip())
    sentences: list[str] = []
    for piece in pieces:
        last_word = sentences[-1].rsplit(None, 1)[-1].rstrip(".").lower() if sentences else ""
        if sentences and sentences[-1].endswith(".") and last_word.lstrip("\"'(") in ABBREVIATIONS:
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return [s for s in sentences if s]


def normalize_text(text: str) -> str:
    """Straight quotes, dashes as commas, no emphasis marks or double quotes, single spaces.

    Double quotes are dropped rather than checked: they are not spoken, and splitting dialogue
    into sentences leaves them unpaired ('"I am sure.' / 'You will like her," said Emma.').
    """
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE).replace('"', " ")
    text = re.sub(r"\s*(--+| - )\s*", ", ", text)  # a dash is a pause: say it as a comma
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,;:.!?)])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)  # ", ;" left by a dash next to a comma
    text = re.sub(r"([.!?]),", r"\1", text)  # '"Oh!"--"Yes"' became 'Oh!, Yes'
    text = re.sub(r"\(\s+", "(", text)
    return text.strip(" ,;:")


def rejection_reason(sentence: str, min_words: int = MIN_WORDS,
                     max_words: int = MAX_WORDS) -> str | None:
    """Why a normalized sentence is not fit to be spoken as a transcript (None: it is)."""
    if not min_words <= len(sentence.split()) <= max_words:
        return "length"
    if not sentence[:1].isalpha():
        return "no-leading-letter"
    if not sentence.isascii():
        return "non-ascii"
    if _URL.search(sentence):
        return "url"
    if _DIGIT.search(sentence):
        return "digits"  # espeak reads '1811' its own way; the transcript would not match
    if not _ALLOWED.fullmatch(sentence):
        return "symbols"
    first_word_end = sentence.find(" ")
    if (len(_UPPER.findall(sentence)) > 0.3 * len(_LETTER.findall(sentence))
            or _CAPS_WORD.search(sentence, first_word_end)):  # 'the BBC', 'trusting YOU'
        return "all-caps"
    if sentence.count("(") != sentence.count(")") or _QUOTE_OPEN.search(sentence):
        return "unbalanced"
    if "..." in sentence:
        return "fragment"
    return None


def clean_sentence(raw: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> str | None:
    """Normalize one sentence and return it capitalized with end punctuation, or None to drop it."""
    return _finish(normalize_text(raw), min_words, max_words)


def _finish(sentence: str, min_words: int, max_words: int) -> str | None:
    if rejection_reason(sentence, min_words, max_words):
        return None
    sentence = sentence[0].upper() + sentence[1:]
    return sentence if sentence[-1] in ".!?" else sentence + "."


def dedupe_key(sentence: str) -> str:
    """Case, punctuation and spacing do not make a sentence new."""
    return " ".join(re.findall(r"[a-z0-9']+", sentence.lower()))


def dedupe(sentences: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    unique = []
    for sentence in sentences:
        key = dedupe_key(sentence)
        if key not in seen:
            seen.add(key)
            unique.append(sentence)
    return unique


def clean_sentences(texts: Iterable[str], min_words: int = MIN_WORDS,
                    max_words: int = MAX_WORDS) -> list[str]:
    """Split texts into sentences, keep the clean ones, drop repeats (first one wins)."""
    cleaned = (_finish(s.strip(" ,;:"), min_words, max_words)  # pieces of normalized text
               for text in texts for s in split_sentences(normalize_text(text)))
    return dedupe(s for s in cleaned if s)


def shuffled(sentences: Iterable[str], seed: int) -> list[str]:
    """A copy in an order fixed by `seed` (the same on every machine and Python 3 version)."""
    out = list(sentences)
    random.Random(seed).shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------
# Source: WordNet 3.0 glosses' example sentences (Debian wordnet-base)

def wordnet_dir() -> Path:
    return Path(os.environ.get("WNSEARCHDIR", "/usr/share/wordnet"))  # WordNet's own variable


def wordnet_examples(root: Path | None = None) -> Iterator[str]:
    """The quoted examples in each synset's gloss: 'he ran into the house' and the like.

    A data.* line ends with '| gloss; "example one"; "example two" - Author'.
    """
    root = root or wordnet_dir()
    files = [root / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.exists() for f in files):
        raise SourceUnavailable(f"WordNet data files not found in {root}: "
                                "apt-get install wordnet-base (or set WNSEARCHDIR)")
    for path in files:
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # licence header lines
                    continue
                yield from re.findall(r'"([^"]+)"', line.split("|", 1)[1])


# ---------------------------------------------------------------------------------------------
# Source: Jane Austen's novels (Debian r-cran-janeaustenr). Read straight from the R package's
# lazy-load database with the small reader below, so R itself never runs.

R_LIBRARIES = ("/usr/lib/R/site-library", "/usr/local/lib/R/site-library", "/usr/lib/R/library")


class _RUnserializer:
    """Just enough of R's XDR serialization (format 2 and 3) to read vectors and lists."""

    NULL_LIKE = {254, 253, 252, 251, 250, 242, 241}  # NULL, global env, missing arg, ...

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError("not R XDR serialization")
        self.data, self.pos, self.refs = data, 2, []
        version = self._int()
        self.pos += 8  # writer and minimal reader R versions
        if version == 3:
            encoding_length = self._int()  # then the native encoding's name
            self.pos += encoding_length

    def _int(self) -> int:
        value = struct.unpack_from(">i", self.data, self.pos)[0]
        self.pos += 4
        return value

    def _take(self, fmt: str, size: int, n: int):
        values = struct.unpack_from(f">{n}{fmt}", self.data, self.pos)
        self.pos += size * n
        return values

    def item(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in self.NULL_LIKE:
            return None
        if kind == 255:  # reference to an earlier symbol
            return self.refs[(flags >> 8 or self._int()) - 1]
        if kind == 1:  # symbol
            self.refs.append(self.item())
            return self.refs[-1]
        if kind in (2, 6, 239, 240):  # pairlist: (tag, value) pairs
            if has_attr:
                self.item()  # a pairlist's own attributes: read past them
            tag = self.item() if has_tag else None
            head, tail = self.item(), self.item()
            return [(tag, head)] + (tail or [])
        if kind == 9:  # one string
            n = self._int()
            value = None if n == -1 else self.data[self.pos:self.pos + n].decode("utf-8", "replace")
            self.pos += max(n, 0)
            return value
        n = self._int()
        if kind in (10, 13):
            value = list(self._take("i", 4, n))
        elif kind == 14:
            value = list(self._take("d", 8, n))
        elif kind in (16, 19, 20):  # character vector, list, expression
            value = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"R type {kind} is not supported")
        if has_attr:
            attributes = dict(self.item())
            if "names" in attributes:
                return dict(zip(attributes["names"], value, strict=True))
        return value


def r_lazyload(base: Path) -> dict[str, object]:
    """Every object of an R lazy-load database (`base`.rdx index + `base`.rdb zlib blobs)."""
    index = _RUnserializer(gzip.decompress(base.with_suffix(".rdx").read_bytes())).item()
    blob = base.with_suffix(".rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset):int(offset) + int(length)]  # 4-byte length, then zlib stream
        objects[name] = _RUnserializer(zlib.decompress(chunk[4:])).item()
    return objects


def janeaustenr_dir() -> Path:
    candidates = [os.environ.get("BLSP_JANEAUSTENR_DIR", "")] + [
        f"{lib}/janeaustenr" for lib in R_LIBRARIES]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "data" / "Rdata.rdb").exists():
            return Path(candidate)
    raise SourceUnavailable("Jane Austen's novels not found: apt-get install r-cran-janeaustenr "
                            "(or set BLSP_JANEAUSTENR_DIR to the R package's folder)")


def austen_paragraphs(root: Path | None = None) -> Iterator[str]:
    """Paragraphs of the six novels; title lines and chapter headings left out."""
    novels = r_lazyload((root or janeaustenr_dir()) / "data" / "Rdata")
    for name in sorted(novels):
        paragraph: list[str] = []
        for line in list(novels[name]) + [""]:
            if line and line.strip():
                paragraph.append(line.strip())
                continue
            text = " ".join(paragraph)
            paragraph = []
            if text and not text.isupper() and not re.match(r"(CHAPTER|VOLUME|By Jane)", text):
                yield text


# ---------------------------------------------------------------------------------------------
# Source: sentences this project wrote itself (always there; tests use them)

def builtin_sentences() -> Iterator[str]:
    with open(DATA_DIR / "builtin_sentences.txt", encoding="utf-8") as f:
        yield from (line.strip() for line in f if line.strip() and not line.startswith("#"))


SOURCES: dict[str, TextSource] = {s.name: s for s in [
    TextSource("wordnet", "WordNet 3.0 gloss example sentences (short, general English)",
               "WordNet 3.0 licence (permissive: use, copy, modify, distribute with notice)",
               "/usr/share/doc/wordnet-base/copyright",
               "apt-get install wordnet-base", wordnet_examples),
    TextSource("austen", "Jane Austen's six novels (narration and dialogue, 1811-1817)",
               "public domain text; R package janeaustenr under MIT",
               "/usr/share/doc/r-cran-janeaustenr/copyright",
               "apt-get install --no-install-recommends r-cran-janeaustenr", austen_paragraphs),
    TextSource("builtin", "a few sentences written by this project (tests, smoke runs)",
               "this project's licence", str(DATA_DIR / "builtin_sentences.txt"),
               "(ships with blsp_demo)", builtin_sentences),
]}
DEFAULT_SOURCE = "wordnet,austen"


def load_sentences(names: str = DEFAULT_SOURCE, seed: int | None = None,
                   min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Clean, deduplicated sentences of one or more comma-separated sources.

    Order: source order (sources in the order named) or, with a seed, a fixed shuffle.
    """
    texts: list[str] = []
    for name in names.split(","):
        if name.strip() not in SOURCES:
            raise KeyError(f"unknown text source {name!r}; known: {', '.join(SOURCES)}")
        texts.extend(SOURCES[name.strip()].load())
    sentences = clean_sentences(texts, min_words, max_words)
    return sentences if seed is None else shuffled(sentences, seed)


def rejection_counts(texts: Iterable[str]) -> dict[str, int]:
    """How many split sentences each cleaning rule drops (for the stats CLI)."""
    counts: dict[str, int] = {}
    for text in texts:
        for sentence in split_sentences(normalize_text(text)):
            reason = rejection_reason(sentence.strip(" ,;:")) or "kept"
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Count and sample the corpus text sources.")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="comma-separated source names")
    parser.add_argument("--sample", type=int, default=10, help="print this many sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the cleaned, shuffled sentences here, one a line")
    args = parser.parse_args(argv)
    for name in args.source.split(","):
        source = SOURCES[name]
        print(f"{name}: {source.description}\n  licence: {source.licence} ({source.licence_file})")
        print(f"  {rejection_counts(source.load())}")
    sentences = load_sentences(args.source, seed=args.seed)
    words = sum(len(s.split()) for s in sentences)
    print(f"{len(sentences)} sentences, {words / max(len(sentences), 1):.1f} words on average")
    print("\n".join(sentences[:args.sample]))
    if args.out:
        Path(args.out).write_text("\n".join(sentences) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
