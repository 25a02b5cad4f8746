"""Token-by-token decoding over a KV cache: sampling, stop rules, loop guard, incremental
detokenization, and the one seeded random generator every decoding mode uses."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from blsp_demo.options import GenerationOptions


def pick_next(logits: torch.Tensor, opts: GenerationOptions, generated: list[list[int]],
              step: int, stop_ids: list[int], rng: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits of the last position -> (B,) next token ids."""
    if opts.temperature <= 0 and opts.repetition_penalty == 1.0 and step >= opts.min_new_tokens:
        return logits.argmax(-1)  # greedy with nothing to edit: no copy
    logits = logits.float().clone()  # inference tensors cannot be edited in place
    if opts.repetition_penalty != 1.0:
        for b, ids in enumerate(generated):
            if ids:
                idx = torch.tensor(sorted(set(ids)), device=logits.device)
                vals = logits[b, idx]
                logits[b, idx] = torch.where(vals > 0, vals / opts.repetition_penalty, vals * opts.repetition_penalty)
    if step < opts.min_new_tokens and stop_ids:
        logits[:, stop_ids] = float("-inf")
    if opts.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / opts.temperature, dim=-1)
    if opts.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > opts.top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


def partial_stop_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest stop-string prefix that `text` ends with (held back from the stream)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


@dataclass
class TextStream:
    """Incremental detokenization: the text of all ids so far, held back while a multi-byte
    character or a possible stop string is incomplete."""

    tokenizer: object
    stop_strings: tuple[str, ...]
    ids: list[int]
    emitted: int = 0  # characters of `text` already handed out
    stopped: bool = False

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stop_strings:
            at = text.find(stop)
            if at >= 0:
                self.stopped = True
                return self._emit(text[:at].rstrip())
        if text.endswith("\ufffd"):
            return ""
        hold = partial_stop_len(text, self.stop_strings)
        return self._emit(text[: len(text) - hold] if hold else text)

    def _emit(self, upto: str) -> str:
        delta = upto[self.emitted:] if len(upto) > self.emitted else ""
        self.emitted = max(self.emitted, len(upto))
        return delta

    def flush(self) -> str:
        """What is left to hand out once decoding ends (held-back characters)."""
        raw = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        sent = raw[: self.emitted].lstrip()
        final = self.final_text()
        rest = final[len(sent):] if final.startswith(sent) else ""
        self.emitted = len(raw)
        return rest

    def final_text(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stop_strings:
            at = text.find(stop)
            if at >= 0:
                text = text[:at]
        return text.strip()


def make_rng(opts: GenerationOptions, device: torch.device) -> torch.Generator | None:
    """The generator token-by-token sampling draws from (None: greedy, or unseeded sampling)."""
    if opts.temperature <= 0 or opts.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(opts.seed)


@contextlib.contextmanager
def seeded(opts: GenerationOptions, device: torch.device) -> Iterator[None]:
    """For `generate` (beams, batches), which draws from torch's global generator: the same seed
    as `make_rng`, in a forked RNG state, so the caller's global state is left as it was."""
    if opts.temperature <= 0 or opts.seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(opts.seed)
        yield


# A loop: the same block of tokens at least MIN_REPEATS times in a row at the end of the answer,
# covering at least MIN_SPAN tokens ("la France, la France, la France, ..."). Small LLMs fall into
# such loops after a confusing turn and would otherwise run to max_new_tokens.
MIN_REPEATS = 3
MIN_SPAN = 12
MAX_PERIOD = 64


def loop_at_end(ids: list[int], min_repeats: int = MIN_REPEATS, min_span: int = MIN_SPAN,
                max_period: int = MAX_PERIOD) -> tuple[int, int] | None:
    """(period, repeats) of the shortest block repeated at the end of `ids`, or None."""
    n = len(ids)
    for period in range(1, min(max_period, n // min_repeats) + 1):
        repeats = 1
        while (repeats + 1) * period <= n and ids[n - (repeats + 1) * period: n - repeats * period] == ids[n - period:]:
            repeats += 1
        if repeats >= min_repeats and repeats * period >= min_span:
            return period, repeats
    return None


def cut_loop(ids: list[int]) -> list[int] | None:
    """`ids` with a loop at its end reduced to one copy of the repeated block; None: no loop."""
    found = loop_at_end(ids)
    if found is None:
        return None
    period, repeats = found
    return ids[: len(ids) - (repeats - 1) * period]
