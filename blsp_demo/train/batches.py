"""Training examples and padded batches for the adapter (student: speech; teacher: transcript)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from blsp_demo.conversation import Conversation
from blsp_demo.model.tokens import SPEECH_PLACEHOLDER
from blsp_demo.prompts import Bos, PromptTemplate, Speech, Text, render

IGNORE = -100


@dataclass(frozen=True)
class Example:
    id: str
    instruction: str
    transcript: str
    target: str
    kind: str = "repeat"
    end_of_turn: bool = True  # False when the target was cut at the generation limit


def prompt_ids(tpl: PromptTemplate, tokenize, bos_id: int | None, instruction: str,
               speech_len: int | None = None, transcript: str | None = None) -> list[int]:
    """One user turn (speech of `speech_len` frames, or its transcript) up to the assistant's reply."""
    conv = Conversation().add_speech("speech", instruction=instruction)
    pieces = render(tpl, conv, {0: transcript} if transcript is not None else None)
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, Speech):
            ids += [SPEECH_PLACEHOLDER] * speech_len
        elif isinstance(piece, Bos):
            ids.append(bos_id)
        elif isinstance(piece, Text):
            ids += tokenize(piece.text)
    return ids


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L) right-padded, placeholders where speech goes
    attention: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L) target ids, IGNORE elsewhere
    target_pos: list[list[int]]  # per row: positions whose logits predict the target tokens


def pad_rows(rows: list[list[int]], targets: list[list[int]], pad_id: int) -> Batch:
    width = max(len(r) + len(t) for r, t in zip(rows, targets))
    ids = torch.full((len(rows), width), pad_id)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE)
    positions = []
    for b, (prompt, target) in enumerate(zip(rows, targets)):
        seq = prompt + target
        ids[b, : len(seq)] = torch.tensor(seq)
        attention[b, : len(seq)] = 1
        labels[b, len(prompt): len(seq)] = torch.tensor(target)
        positions.append(list(range(len(prompt) - 1, len(seq) - 1)))
    return Batch(ids, attention, labels, positions)


def target_ids(tokenize, end_ids: list[int], ex: Example, max_tokens: int) -> list[int]:
    ids = tokenize(ex.target)[:max_tokens]
    return ids + end_ids if ex.end_of_turn and len(ids) < max_tokens else ids


def length_buckets(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length (less padding), in a random order that depends on (seed, epoch)."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start: start + chunk], key=lambda i: lengths[i])
        batches += [block[i: i + batch_size] for i in range(0, len(block), batch_size)]
    rng.shuffle(batches)
    return batches
