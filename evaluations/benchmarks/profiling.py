"""Where the time of a turn goes: wall time inside the Whisper encoder and the LLM's forward passes
(forward hooks, nothing in the engine changes), and torch.profiler's table of operators."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from blsp_demo.conversation import Conversation

from .machine import sync
from .official import OfficialPath, forced_options
from .speech import UserTurn
from .stages import Settings, add_user, log


@dataclass
class Stages:
    """Seconds spent in each part of one turn (the rest of the TTFT is audio, mel, tokens, Python)."""

    ttft_s: float = 0.0
    encoder_s: float = 0.0
    encoder_calls: int = 0
    prefill_s: float = 0.0
    prefill_positions: int = 0
    decode_s: float = 0.0
    decode_steps: int = 0

    @property
    def other_s(self) -> float:
        return max(0.0, self.ttft_s - self.encoder_s - self.prefill_s)


@dataclass
class StageClock:
    """Forward hooks timing the encoder (conv1 in, final layer_norm out: both windows pass there)
    and each LLM forward (more than one new position: prefill; one: a decode step)."""

    model: torch.nn.Module  # a BlspModel
    device: torch.device
    runtime: object = None  # the engine's LLM runtime: a llama.cpp one is timed at its `forward`
    stages: Stages = field(default_factory=Stages)
    _handles: list = field(default_factory=list)
    _t: dict = field(default_factory=dict)

    def __enter__(self) -> "StageClock":
        enc, llm = self.model.whisper_model, self.model.llama_model
        self._handles = [
            enc.conv1.register_forward_pre_hook(lambda m, a: self._start("enc")),
            enc.layer_norm.register_forward_hook(lambda m, a, o: self._stop_encoder()),
            llm.register_forward_pre_hook(self._start_llm, with_kwargs=True),
            llm.register_forward_hook(lambda m, a, o: self._stop_llm()),
        ]
        if getattr(self.runtime, "kind", "") == "llama.cpp":  # no torch module runs the LLM: time its calls
            inner = self.runtime.forward

            def timed(ids, frames, past, start):
                self._t["positions"] = len(ids)
                self._start("llm")
                try:
                    return inner(ids, frames, past, start)
                finally:
                    self._stop_llm()

            self.runtime.forward = timed  # an instance attribute, removed on exit
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        if self.runtime is not None and "forward" in vars(self.runtime):
            del self.runtime.forward

    def _start(self, key: str) -> None:
        sync(self.device)
        self._t[key] = time.perf_counter()

    def _stop_encoder(self) -> None:
        sync(self.device)
        self.stages.encoder_s += time.perf_counter() - self._t.pop("enc")
        self.stages.encoder_calls += 1

    def _start_llm(self, module, args, kwargs) -> None:
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        self._t["positions"] = int(x.shape[1]) if x is not None else 1
        self._start("llm")

    def _stop_llm(self) -> None:
        sync(self.device)
        dt = time.perf_counter() - self._t.pop("llm")
        n = self._t.pop("positions")
        if n > 1 or self.stages.prefill_positions == 0 and self.stages.decode_steps == 0:
            self.stages.prefill_s += dt
            self.stages.prefill_positions += n
        else:
            self.stages.decode_s += dt
            self.stages.decode_steps += 1


def op_table(fn, device: torch.device, rows: int = 10) -> list[dict]:
    """torch.profiler over `fn()`: the operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:rows]
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, attr) / 1e3,
             "share": getattr(e, attr) / total} for e in top]


def loader_times(clip: str, repeats: int = 5) -> dict[str, float]:
    """Median ms to read a clip: the engine's loader (ffmpeg, validated) and the official one (soundfile)."""
    from statistics import median

    from blsp_demo.audio import load_audio

    from .official import official_waveform

    out = {}
    for name, fn in (("engine load_audio (ffmpeg)", load_audio), ("official soundfile", official_waveform)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(clip)
            times.append(time.perf_counter() - t0)
        out[name] = median(times) * 1e3
    return out


def profile_turns(engine, official: OfficialPath, script: list[UserTurn], s: Settings,
                  at: tuple[int, ...] = (1, 10)) -> dict:
    """Turns `at` of the conversation, engine and official path: stage times, then operator tables
    (a second pass over the conversation, so the profiler's overhead stays out of the stage times)."""
    opts = forced_options(s.chat_tokens)
    at = tuple(k for k in at if k <= len(script))
    result: dict = {"stages": {}, "ops": {}, "audio_ms": loader_times(next(t.audio for t in script if t.audio))}
    for pass_ in ("stages", "ops"):
        conv, mels = Conversation(id=f"profile-{pass_}"), {}
        for k, turn in enumerate(script, start=1):
            conv = add_user(conv, turn)
            if k not in at:
                conv = conv.add_reply(engine.respond(conv, opts).text)
                continue
            official.remember(conv, mels, upto=-1)
            runs = {"engine": lambda: engine.respond(conv, opts),
                    "official": lambda: official.respond(conv, opts, mels)}
            outs = {}
            for name, fn in runs.items():
                if pass_ == "stages":
                    with StageClock(engine.frontend.model, engine.device,
                                    runtime=engine.runtime if name == "engine" else None) as clock:
                        outs[name] = fn()
                    clock.stages.ttft_s = outs[name].ttft_s
                    result["stages"][f"{name} turn {k}"] = clock.stages
                else:
                    box = []
                    result["ops"][f"{name} turn {k}"] = op_table(lambda: box.append(fn()), engine.device)
                    outs[name] = box[0]
            conv = conv.add_reply(outs["engine"].text)
            log(f"  profile ({pass_}) turn {k} done")
        engine.forget(conv.id)
    return result
