"""Compare, without the UI: one question to two anonymous systems, a vote, then the reveal.

A round: a typed or spoken question (or a spoken example, whose transcript is known) goes to two
systems, chosen by the person or drawn at random, shown as A and B in a random order. The draw is
seeded by the session id and the round number, so a session's draws can be replayed. A system that
cannot take the question is left out of the draw with a notice: one that fails to load (micro-blsp
before its adapter is trained), and the text system (Text+LLM) for speech without a transcript. (A
recording whose bytes are those of a spoken example keeps the example's transcript.)

Both answers stream at once, interleaved chunk by chunk in one thread. Each side's `ttft_s` is its
own; its `total_s` includes the other side's decoding, so compare speed in the Chat tab. Each answer
is logged as a `turn` record (with `compare_round`, `compare_side`), as in the Chat tab, so an
unvoted round is not lost; the vote is a `vote` record carrying both turns, both models, the
choice and the reason. Which system was A and which B is shown only after the vote.

State objects are immutable; the handlers in `ui/compare.py` keep them in `gr.State`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

from blsp_demo.conversation import SpeechClip
from blsp_demo.vocab import VOTE_CHOICES
from blsp_demo.files import content_sha256
from blsp_demo.app.records import new_id
from blsp_demo.app.store import question_of
from blsp_demo.app.services import Services
from blsp_demo.app.limits import RateLimited, release_before_last
from blsp_demo.app.session import Chat, ChatSettings, ChatState, TurnFailed, UserInput

log = logging.getLogger(__name__)

RANDOM = "random"  # a pick that leaves the system to the draw
SIDES = ("A", "B")
CHOICES = VOTE_CHOICES
CHOICE_WORDS = {"A": "A is better", "B": "B is better", "tie": "a tie", "both_bad": "both are bad"}
SHOWN_FIELDS = ("model", "model_id", "engine", "revision", "transcript_heard", "ttft_s", "total_s",
                "new_tokens", "tokens_per_s")


@dataclass(frozen=True)
class Round:
    id: str
    session: str
    question: UserInput
    models: tuple[str, str]  # the specs shown as A and B
    drawn: str  # "random", "chosen" (both picked), or "mixed" (one picked, one drawn)
    notices: tuple[str, ...] = ()
    turns: tuple[dict, ...] = ()  # the turn records of A and B, once both are logged
    vote: dict | None = None  # the vote record, once voted

    @property
    def answered(self) -> bool:
        return len(self.turns) == 2


@dataclass(frozen=True)
class CompareState:
    """A session's Compare tab: how many rounds it started (seeds the draws) and the current one."""

    rounds: int = 0
    current: Round | None = None


@dataclass(frozen=True)
class RoundProgress:
    answers: tuple[str, str]  # what A and B said so far
    status: str
    state: CompareState
    done: bool = False  # both answers are in: the round can be voted on


class RoundFailed(Exception):
    """A round could not be played; the message is for the person."""


def normalize_choice(choice: str) -> str:
    """"a", "B", "Tie", "both bad", "both_bad" -> A | B | tie | both_bad."""
    key = "_".join(str(choice or "").strip().lower().replace("-", " ").split())
    found = {"a": "A", "b": "B", "tie": "tie", "both_bad": "both_bad", "bothbad": "both_bad"}.get(key)
    if found is None:
        raise ValueError(f"A vote is one of A, B, tie, both_bad; got {choice!r}.")
    return found


def interleave(streams: Sequence[Iterator]) -> Iterator[tuple[int, object]]:
    """(index, item) from several iterators in turn, until all are exhausted."""
    live = dict(enumerate(streams))
    while live:
        for i in list(live):
            try:
                yield i, next(live[i])
            except StopIteration:
                del live[i]


class Arena:
    """Plays Compare rounds and records votes; one instance serves every session."""

    def __init__(self, services: Services, systems: Sequence[str] | None = None):
        self.services = services
        self.chat = Chat(services)
        self.pool = services.pool
        self.store = services.store
        self.systems = list(dict.fromkeys(systems if systems is not None else services.model_choices))
        self.transcripts = {content_sha256(ex.audio): ex.text for ex in services.examples}  # by content

    def with_known_transcript(self, inp: UserInput) -> UserInput:
        """A spoken example sent as a file (upload, API) is still that example: keep its transcript."""
        if inp.audio is None or not Path(inp.audio).is_file():
            return inp
        clip = inp.clip or SpeechClip.of(inp.audio)  # hashed once here, for both sides of the round
        return replace(inp, clip=clip, transcript=inp.transcript or self.transcripts.get(clip.sha256))

    # -- the draw
    def needs_transcript(self, spec: str) -> bool:
        """The text system reads the known transcript of speech instead of hearing it."""
        from blsp_demo.engine.registry import REGISTRY

        if spec in REGISTRY:
            return REGISTRY[spec].system == "text"
        return self.pool.is_loaded(spec) and self.pool.get(spec).name == "text"

    def _usable(self, spec: str, inp: UserInput, detail: bool = False) -> str | None:
        """None when `spec` can answer `inp`, else why not (loading it if needed). The reason
        names no other system unless `detail` (load errors may suggest one)."""
        if inp.audio is not None and not inp.transcript and self.needs_transcript(spec):
            return f"{spec} answers from known transcripts, and this recording has none"
        try:
            engine = self.pool.get(spec)
        except Exception as err:  # noqa: BLE001 - a system that cannot load sits this round out
            log.warning("compare: %s could not be loaded: %s", spec, err)
            return f"{spec} could not be loaded ({err})" if detail else f"{spec} could not be loaded"
        if inp.audio is not None and not inp.transcript and engine.name == "text":
            return f"{spec} answers from known transcripts, and this recording has none"
        return None

    def draw(self, session: str, round_no: int, inp: UserInput,
             picks: Sequence[str] = (RANDOM, RANDOM)) -> tuple[tuple[str, str], str, tuple[str, ...]]:
        """(models as A and B, how they were chosen, notices about systems left out)."""
        rng = random.Random(f"{session}:{round_no}")
        chosen = [p for p in picks if p and p != RANDOM]
        if len(chosen) != len(set(chosen)):
            raise RoundFailed(f"Pick two different systems (both are {chosen[0]}), or leave one to the draw.")
        for spec in chosen:
            why = self._usable(spec, inp, detail=True)
            if why is not None:
                raise RoundFailed(f"Not this pick: {why}. Pick another system.")
        notices, models = [], list(chosen)
        pool = [s for s in self.systems if s not in chosen]
        rng.shuffle(pool)
        while len(models) < 2 and pool:
            spec = pool.pop()
            why = self._usable(spec, inp)
            if why is None:
                models.append(spec)
            else:
                notices.append(f"Left out of the draw: {why}.")
        if len(models) < 2:
            raise RoundFailed("Fewer than two systems can answer this question. " + " ".join(notices))
        rng.shuffle(models)
        how = {0: "random", 1: "mixed", 2: "chosen"}[len(chosen)]
        return (models[0], models[1]), how, tuple(notices)

    # -- a round
    def ask(self, state: CompareState | None, session: str, settings: ChatSettings, inp: UserInput,
            picks: Sequence[str] = (RANDOM, RANDOM), source: str = "browser",
            client: str | None = None) -> Iterator[RoundProgress]:
        """Draw two systems and stream both answers. Raises RoundFailed when the round cannot be
        played (the state then has no current round). A round is one turn of `client` for the
        rate limit (`Chat.answer`)."""
        try:
            admitted = self.chat.gate.enter(client) if client is not None else None
        except RateLimited as err:
            raise RoundFailed(str(err)) from None
        yield from release_before_last(self._ask(state, session, settings, inp, picks, source),
                                       lambda: admitted is not None and self.chat.gate.leave(admitted))

    def _ask(self, state, session, settings, inp, picks, source) -> Iterator[RoundProgress]:
        state = state or CompareState()
        state = replace(state, rounds=state.rounds + 1, current=None)
        try:
            inp = self.with_known_transcript(inp.check())
        except ValueError as err:
            raise RoundFailed(str(err)) from None
        yield RoundProgress(("", ""), "Choosing two systems (the first use of one loads it)…", state)
        models, how, notices = self.draw(session, state.rounds, inp, picks)
        rnd = Round(new_id(), session, inp, models, how, notices)
        chats = [ChatState(session=session) for _ in SIDES]  # a fresh conversation per side
        sides = [self.chat.answer(chat, replace(settings, model=model), inp,
                                  extra={"compare_round": rnd.id, "compare_side": side, "source": source})
                 for chat, side, model in zip(chats, SIDES, models)]
        texts, records = ["", ""], [None, None]
        current = replace(state, current=rnd)
        try:
            for i, step in interleave(sides):
                if step.done:
                    records[i] = step.record
                if step.history and step.history[-1]["role"] == "assistant":
                    texts[i] = step.history[-1]["content"]
                yield RoundProgress(tuple(texts), "Both systems are answering…", current)
        except TurnFailed as err:
            raise RoundFailed(f"One of the two systems could not answer: {err}") from None
        finally:  # a round is one turn: its KV caches are never reused
            for side in sides:
                side.close()
            for chat, model in zip(chats, models):
                self.pool.get(model).forget(chat.conversation.id)
        done = replace(state, current=replace(rnd, turns=tuple(records)))
        status = "Both answers are in: which is better? The systems are revealed after your vote."
        yield RoundProgress(tuple(texts), " ".join([status, *notices]), done, done=True)

    # -- the vote
    def vote(self, state: CompareState | None, session: str, choice: str, reason: str = "",
             source: str = "browser", annotator: str = "") -> tuple[dict, CompareState]:
        """Record a vote on the current round; returns the vote record and the new state."""
        choice = normalize_choice(choice)
        rnd = (state or CompareState()).current
        if rnd is None:
            raise ValueError("There is no round to vote on: ask a question first.")
        if rnd.vote is not None:
            raise ValueError(f"This round already has your vote ({CHOICE_WORDS[rnd.vote['choice']]}); "
                             "ask a new question for another round.")
        if not rnd.answered:
            raise ValueError("Wait until both answers are complete, then vote.")
        if rnd.session != session:
            raise ValueError("This round was deleted with your data; ask a new question.")
        a, b = rnd.turns
        winner = {"A": rnd.models[0], "B": rnd.models[1]}.get(choice)
        record = self.store.vote(
            session, choice, reason, annotator=annotator, round=rnd.id, model_a=rnd.models[0], model_b=rnd.models[1], winner=winner,
            model_id_a=a.get("model_id"), model_id_b=b.get("model_id"), turn_ids=[a["id"], b["id"]],
            turns=[{"side": s, **t} for s, t in zip(SIDES, rnd.turns)], modality=a.get("modality"),
            question=asked(rnd.turns), drawn=rnd.drawn, source=source)
        return record, replace(state, current=replace(rnd, vote=record))


def asked(turns: Sequence[dict]) -> str:
    """The question in words: typed, known, or as heard by a side that transcribes (cascade)."""
    said = [question_of(t) for t in turns]
    return next((q for q in said if not q.endswith("(speech)")), said[0])


def revealed(record: dict) -> dict:
    """What a vote reveals: the two systems and their timings, the choice, the winner."""
    sides = {t["side"]: {k: t.get(k) for k in SHOWN_FIELDS} for t in record["turns"]}
    return {"vote_id": record["id"], "round": record["round"], "choice": record["choice"],
            "winner": record["winner"], "A": sides["A"], "B": sides["B"], "drawn": record["drawn"]}


def reveal_markdown(record: dict) -> str:
    """One line per side: the system behind it and its timings; then the vote."""
    lines = []
    for turn in record["turns"]:
        timing = f"first token {turn.get('ttft_s') or 0:.2f} s, {turn.get('new_tokens') or 0} tokens"
        heard = f", heard \u201c{turn['transcript_heard']}\u201d" if turn.get("engine") == "cascade" \
            and turn.get("transcript_heard") else ""
        lines.append(f"**{turn['side']}** was **{turn['model']}** ({turn.get('engine')}; {timing}{heard})")
    said = f" \u2014 \u201c{record['reason']}\u201d" if record.get("reason") else ""
    lines.append(f"Your vote: **{CHOICE_WORDS[record['choice']]}**{said} (saved as {record['id'][:8]}).")
    return "  \n".join(lines)
