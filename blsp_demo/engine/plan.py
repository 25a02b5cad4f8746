"""From a conversation to a tokenized prompt: ids (with speech placeholders), a cache key per
position, and the speech frames that fill the placeholders.

`Prompting` holds what planning needs (tokenizer, template, speech frontend) and the planner the
template names (`PromptTemplate.tokenization`, looked up in `engine.build.PLANNERS`): `plan_pieces`
here tokenizes each rendered piece on its own, as the official BLSP code does; `engine.llasm`'s
groups them into the tokenizer calls LLaSM's code makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from blsp_demo.conversation import Conversation
from blsp_demo.engine.cache import ChatCache, Key
from blsp_demo.model.tokens import SPEECH_PLACEHOLDER
from blsp_demo.prompts import Bos, Piece, PromptTemplate, Reply, Speech, Text, render


@dataclass
class PromptPlan:
    """A rendered, tokenized prompt: ids with placeholders, a key per position, speech frames."""

    ids: list[int]
    keys: list[Key]
    speech: list[tuple[int, torch.Tensor]]  # (start position, (S, d_llm) frames)
    shared: int = 0  # leading positions from conversation-independent pieces (BOS, system prompt)

    @property
    def shared_keys(self) -> tuple[Key, ...]:
        return tuple(self.keys[:self.shared])

    def frames_from(self, start: int) -> torch.Tensor | None:
        """Speech frames for the placeholders at positions >= start, in order."""
        parts = [f[max(0, start - s):] for s, f in self.speech if s + f.shape[0] > start]
        return torch.cat(parts) if parts else None


def shared_piece_count(tpl: PromptTemplate, system: str, pieces: list[Piece]) -> int:
    """How many leading pieces every conversation with this system text starts with: BOS markers,
    then the system segment (`system_format`, or for a template that puts the system text inside the
    first user turn, the user prefix with it, when it is a piece of its own). Each piece is
    tokenized on its own, so these pieces' positions never depend on what follows."""
    sys_text = tpl.system_format.format(system=system) if system else ""
    system_pieces = {sys_text, tpl.user_prefix + sys_text if tpl.system_inline else sys_text} if sys_text else set()
    n = 0
    while n < len(pieces) and isinstance(pieces[n], Bos):
        n += 1
    if n < len(pieces) and isinstance(pieces[n], Text) and pieces[n].text in system_pieces:
        n += 1
    return n


Planner = Callable[["Prompting", Conversation, ChatCache], PromptPlan]


@dataclass
class Prompting:
    tokenizer: object
    template: PromptTemplate
    frontend: object  # engine.frontends.SpeechFrontend
    planner: Planner

    def tokenize(self, text: str, plain: bool = False) -> list[int]:
        """Token ids of `text`; `plain`: control tokens written in it (`<|im_start|>`) stay text,
        so a user cannot forge roles."""
        extra = {"split_special_tokens": True} if plain else {}
        return self.tokenizer(text, add_special_tokens=False, **extra)["input_ids"]

    def plan(self, conv: Conversation, cache: ChatCache) -> PromptPlan:
        return self.planner(self, conv, cache)

    def fit_context(self, conv: Conversation, cache: ChatCache, max_new: int,
                    max_context: int) -> tuple[Conversation, PromptPlan, tuple[str, ...]]:
        """Drop the oldest exchanges until the prompt plus the answer fits the context."""
        plan = self.plan(conv, cache)
        dropped = 0
        while len(plan.ids) + max_new > max_context:
            users = [i for i, t in enumerate(conv.turns) if t.role == "user"]
            if len(users) <= 1:
                raise ValueError(f"this turn needs {len(plan.ids)} prompt positions plus {max_new} new tokens, "
                                 f"more than the model's context of {max_context}; shorten it")
            conv = Conversation(turns=conv.turns[users[1]:], system=conv.system, id=conv.id)
            dropped += users[1]
            plan = self.plan(conv, cache)
        notices = (f"Dropped the {dropped} oldest turns to fit the model's {max_context}-position context.",) \
            if dropped else ()
        return conv, plan, notices


def plan_pieces(p: Prompting, conv: Conversation, cache: ChatCache) -> PromptPlan:
    """Each rendered piece tokenized on its own; speech pieces become placeholder runs."""
    pieces: list[Piece] = render(p.template, conv, p.frontend.speech_texts(conv, cache))
    system = conv.system if conv.system is not None else p.template.system_default
    n_shared = shared_piece_count(p.template, system, pieces)
    ids: list[int] = []
    keys: list[Key] = []
    speech: list[tuple[int, torch.Tensor]] = []
    shared = 0
    for n, piece in enumerate(pieces):
        if n == n_shared:
            shared = len(ids)
        if isinstance(piece, Speech):
            akey, frames = p.frontend.speech_frames(conv.turns[piece.turn_index].clip, cache)
            speech.append((len(ids), frames))
            ids += [SPEECH_PLACEHOLDER] * frames.shape[0]
            keys += [("s", akey, j) for j in range(frames.shape[0])]
            continue
        if isinstance(piece, Bos):
            new = [p.tokenizer.bos_token_id]
        elif isinstance(piece, Reply):
            known = cache.reply_ids.get((piece.turn_index, piece.text))
            new = known if known is not None else p.tokenize(piece.text, plain=True)
        else:
            new = p.tokenize(piece.text, plain=piece.user)
        ids += new
        keys += [("t", t) for t in new]
    return PromptPlan(ids, keys, speech, shared)
