"""The benchmark's stages. Each runs the engine and the official path side by side, turn by turn or
chunk by chunk, so that both see the same load on a shared machine; ratios are taken within a run.

- `run_question`: a 5 s spoken question, one turn: TTFT and decode tokens/s;
- `run_chat`: turns 1..n of a conversation alternating speech and text, TTFT per turn;
- `run_batch`: utterances per second over spoken questions, engine batched vs one at a time;
- `run_limit`: decode tokens/s against the memory-bandwidth bound, and peak memory.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from statistics import median

import torch

from blsp_demo.options import Response
from blsp_demo.conversation import Conversation, single_turn

from .machine import copy_bandwidth, kv_bytes_per_position, sync, weight_bytes
from .official import OfficialPath, Timed, forced_options
from .speech import UserTurn


@dataclass(frozen=True)
class Settings:
    name: str
    reps: int  # repetitions of the conversation
    question_reps: int  # repetitions of the 5 s question
    turns: int  # conversation length (user turns)
    chat_tokens: int  # new tokens a conversation turn
    question_tokens: int  # new tokens for the 5 s question (the decode-rate measurement)
    batch_n: int  # spoken questions in the batch stage
    batch_size: int
    batch_tokens: int
    copy_mib: int  # size of the bandwidth copy
    official_turns: tuple[int, ...] | None = None  # turns the official path runs at (None: all)
    full_window_engine: bool = True  # also time the engine with 30 s windows on the question
    profile: bool = False

    def official_runs(self, turn: int) -> bool:
        return self.official_turns is None or turn in self.official_turns


QUICK = Settings("quick", reps=1, question_reps=1, turns=10, chat_tokens=8, question_tokens=16, batch_n=8,
                 batch_size=8, batch_tokens=8, copy_mib=256, official_turns=(1, 10), full_window_engine=False)
FULL = Settings("full", reps=3, question_reps=5, turns=10, chat_tokens=16, question_tokens=64, batch_n=50,
                batch_size=25, batch_tokens=32, copy_mib=512, profile=True)


@dataclass(frozen=True)
class Sample:
    """One timed turn of one system."""

    stage: str  # question | chat
    system: str  # engine | engine-full | official
    turn: int
    rep: int
    ttft_s: float
    total_s: float
    new_tokens: int
    tokens_per_s: float
    prompt_tokens: int  # positions of the whole prompt
    prefill_tokens: int  # positions this turn ran through the LLM before the first token
    tokens_per_cpu_s: float  # decode rate per second this process spent on a CPU (GPU: = tokens_per_s)


def respond(engine, conv: Conversation, opts) -> tuple[Response, float]:
    """`engine.respond`, plus its decode rate per CPU-second of this process (from the first streamed
    chunk to the end): on a shared machine, what the rate would be with a core to itself."""
    first, last = None, None
    for last in engine.stream(conv, opts):
        first = first or (time.perf_counter(), time.process_time())
    r = last.response
    wall, cpu = time.perf_counter() - first[0], time.process_time() - first[1]
    if engine.device.type != "cpu" or wall <= 0 or cpu <= 0:
        return r, r.tokens_per_s
    return r, r.tokens_per_s * wall / cpu


def engine_sample(stage: str, system: str, turn: int, rep: int, run: tuple[Response, float]) -> Sample:
    r, per_cpu_s = run
    return Sample(stage, system, turn, rep, r.ttft_s, r.total_s, r.new_tokens, r.tokens_per_s,
                  r.prefill_tokens + r.cached_tokens, r.prefill_tokens, per_cpu_s)


def official_sample(stage: str, turn: int, rep: int, t: Timed, device: torch.device) -> Sample:
    per_cpu_s = t.tokens_per_cpu_s if device.type == "cpu" else t.tokens_per_s
    return Sample(stage, "official", turn, rep, t.ttft_s, t.total_s, len(t.ids), t.tokens_per_s,
                  t.prompt_tokens, t.prompt_tokens, per_cpu_s)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_user(conv: Conversation, turn: UserTurn) -> Conversation:
    return conv.add_speech(turn.audio) if turn.audio is not None else conv.add_text(turn.text)


def warm_up(engines: dict, official: OfficialPath, clip: str) -> None:
    """One short untimed turn each: first-call allocations and lazy imports stay out of the timings.
    The engine also keeps its shared cache of the system prompt from it, as a serving engine has it
    after its first conversation: the timed first turns prefill only what follows the system prompt."""
    opts = forced_options(2)
    for engine in engines.values():
        engine.respond(single_turn(audio=clip), opts)
    official.respond(single_turn(audio=clip), opts)


# ---- stages ----------------------------------------------------------------------------------
def run_question(engines: dict, official: OfficialPath, clip: str, s: Settings) -> list[Sample]:
    """The 5 s spoken question as a first turn, `question_reps` times, systems interleaved."""
    opts = forced_options(s.question_tokens)
    out = []
    for rep in range(s.question_reps):
        for name, engine in engines.items():
            out.append(engine_sample("question", name, 1, rep, respond(engine, single_turn(audio=clip), opts)))
        timed = official.respond(single_turn(audio=clip), opts)
        out.append(official_sample("question", 1, rep, timed, official.device))
        log(f"  question rep {rep + 1}/{s.question_reps}: " + ", ".join(
            f"{x.system} {x.ttft_s * 1e3:.0f} ms" for x in out[-len(engines) - 1:]))
    return out


def run_chat(engine, official: OfficialPath, script: list[UserTurn], s: Settings) -> list[Sample]:
    """Turns 1..n; the history holds the engine's replies (the official path reads the same text).
    Each repetition is a new conversation: the engine starts with no cache of its own, only the
    shared system-prompt positions (the official path has no cache at all)."""
    opts = forced_options(s.chat_tokens)
    out = []
    for rep in range(s.reps):
        conv, mels = Conversation(id=f"bench-{uuid.uuid4().hex}"), {}
        for k, turn in enumerate(script, start=1):
            conv = add_user(conv, turn)
            r, per_cpu_s = respond(engine, conv, opts)
            out.append(engine_sample("chat", "engine", k, rep, (r, per_cpu_s)))
            if s.official_runs(k):
                official.remember(conv, mels, upto=-1)  # earlier turns' features, as the official history holds them
                t = official.respond(conv, opts, mels)
                out.append(official_sample("chat", k, rep, t, official.device))
                log(f"  chat rep {rep + 1} turn {k}: engine {r.ttft_s * 1e3:.0f} ms, official {t.ttft_s * 1e3:.0f} ms")
            conv = conv.add_reply(r.text)
        engine.forget(conv.id)
    return out


@dataclass(frozen=True)
class BatchResult:
    n: int
    batch_size: int
    new_tokens: int  # per utterance
    engine_s: float
    official_s: float

    @property
    def engine_per_s(self) -> float:
        return self.n / self.engine_s

    @property
    def official_per_s(self) -> float:
        return self.n / self.official_s


def run_batch(engine, official: OfficialPath, clips: list[str], s: Settings) -> BatchResult:
    """Spoken questions as independent one-turn conversations (no instruction, as in the QA set).
    Chunk by chunk: the engine batches a chunk, then the official path answers it one at a time."""
    opts = forced_options(s.batch_tokens)
    convs = [single_turn(audio=c) for c in clips]
    engine_s = official_s = 0.0
    for start in range(0, len(convs), s.batch_size):
        chunk = convs[start:start + s.batch_size]
        t0 = time.perf_counter()
        engine.respond_batch(chunk, opts, batch_size=s.batch_size)
        sync(engine.device)
        engine_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        official.respond_each(chunk, opts)
        official_s += time.perf_counter() - t0
        log(f"  batch {start + len(chunk)}/{len(convs)}: engine {engine_s:.1f} s, official {official_s:.1f} s")
    return BatchResult(len(convs), s.batch_size, s.batch_tokens, engine_s, official_s)


@dataclass
class Limit:
    bandwidth_samples: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) bytes/s
    weight_bytes: int = 0
    kv_bytes_per_position: int = 0
    context: int = 0  # median prompt + half the new tokens of the question stage

    @property
    def bandwidth(self) -> float:
        """The best copy per wall second."""
        return max(w for w, _ in self.bandwidth_samples)

    @property
    def cpu_bandwidth(self) -> float:
        """The best copy per second on a CPU (time other processes held the core left out)."""
        return max(c for _, c in self.bandwidth_samples)

    @property
    def bound_tokens_per_s(self) -> float:
        return self.bandwidth / self.weight_bytes

    @property
    def cpu_bound_tokens_per_s(self) -> float:
        return self.cpu_bandwidth / self.weight_bytes

    @property
    def kv_share(self) -> float:
        """What the KV cache read adds to the weights read per token at `context` positions."""
        return self.kv_bytes_per_position * self.context / self.weight_bytes


def measure_bandwidth(limit: Limit, device: torch.device, s: Settings, times: int = 1) -> None:
    for _ in range(times):
        limit.bandwidth_samples.append(copy_bandwidth(device, s.copy_mib))


def describe_limit(engine, limit: Limit, questions: list[Sample]) -> Limit:
    llm = engine.llm
    if llm is None:  # llama.cpp: the GGUF's tensors, f16 keys and values
        limit.weight_bytes = engine.runtime.weight_bytes()
        limit.kv_bytes_per_position = engine.runtime.kv_bytes_per_position
    else:
        limit.weight_bytes = weight_bytes(llm)
        limit.kv_bytes_per_position = kv_bytes_per_position(llm.config, next(llm.parameters()).dtype)
    prompts = [q.prompt_tokens + q.new_tokens // 2 for q in questions if q.system == "engine"]
    limit.context = int(median(prompts)) if prompts else 0
    return limit
