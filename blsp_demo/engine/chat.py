"""The chat engine: one interface (`stream` / `respond` / `respond_batch`) over a conversation,
composed of an LLM, a prompt planner and a speech frontend (`engine.frontends`), which is all that
differs between the systems (BLSP, LLaSM, cascade, CTC, text).

Each conversation keeps its own KV cache (`cache.ChatCache`, found by conversation id and checked
position by position), so a new turn prefills only the positions the cache does not hold: the
new turn's tokens and speech. The one thing conversations share is the KV cache of the prompt's
conversation-independent start (BOS, system prompt: `cache.PrefixCaches`), looked up by its keys
and copied into a new conversation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from blsp_demo.conversation import Conversation
from blsp_demo.engine.cache import ChatCache, ConversationCaches, PrefixCaches, common_prefix
from blsp_demo.engine.decoding import TextStream, cut_loop, make_rng, pick_next, seeded
from blsp_demo.engine.plan import PromptPlan, Prompting
from blsp_demo.engine.runtime import LlmRuntime, as_runtime
from blsp_demo.engine.search import beam_search, decode_rows
from blsp_demo.options import GenerationOptions, Response


@dataclass(frozen=True)
class StreamChunk:
    delta: str  # new text since the last chunk
    text: str  # the reply so far
    response: Response | None = None  # set on the last chunk


@dataclass(frozen=True)
class EngineLimits:
    max_context: int | None = None  # None: the LLM's own
    max_cached_conversations: int = 32
    max_cache_bytes: int | None = None  # None: bounded by count only
    max_shared_prefixes: int = 8  # 0: no shared prompt starts


class ChatEngine:
    """An LLM that answers conversations; `frontend` decides how speech reaches it. `llm` is a
    torch LLM (run by `runtime.TorchRuntime`) or an `LlmRuntime` (llama.cpp on a CPU)."""

    def __init__(self, llm, prompting: Prompting, *, model_id: str, revision: str = "",
                 device: torch.device | None = None, limits: EngineLimits = EngineLimits()):
        self.prompting = prompting
        self.runtime: LlmRuntime = as_runtime(llm, prompting.frontend.embed, device,
                                              frames=prompting.frontend.speech_as_frames)
        self.llm = self.runtime.llm  # the torch module, None under llama.cpp
        self.model_id = model_id
        self.revision = revision
        self.device = device or self.runtime.device
        ctx = self.runtime.max_context
        self.max_context = min(limits.max_context or ctx, ctx)
        self.caches = ConversationCaches(limits.max_cached_conversations, limits.max_cache_bytes)
        self.prefixes = PrefixCaches(limits.max_shared_prefixes, self.runtime.copy_prefix) \
            if limits.max_shared_prefixes else None
        self.stop_ids = stop_token_ids(self.tokenizer, self.template.stop_strings)

    # ---- what the engine is made of ------------------------------------------------------------
    @property
    def frontend(self):
        return self.prompting.frontend

    @property
    def name(self) -> str:
        """The system: blsp | llasm | cascade | ctc | text (records carry it as `engine`)."""
        return self.frontend.system

    @property
    def tokenizer(self):
        return self.prompting.tokenizer

    @property
    def template(self):
        return self.prompting.template

    def tokenize(self, text: str) -> list[int]:
        return self.prompting.tokenize(text)

    def plan(self, conv: Conversation, cache: ChatCache) -> PromptPlan:
        return self.prompting.plan(conv, cache)

    def embed(self, ids: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
        return self.frontend.embed(ids, frames)

    def speech_frames(self, turn, cache: ChatCache):
        return self.frontend.speech_frames(turn.clip, cache)

    # ---- per-conversation caches -----------------------------------------------------------------
    def cache_for(self, conv_id: str) -> ChatCache:
        return self.caches.get(conv_id)

    def forget(self, conv_id: str) -> None:
        """Drop a conversation's cache (the shared prompt starts stay: they hold no conversation)."""
        self.caches.forget(conv_id)

    # ---- running the LLM -------------------------------------------------------------------------
    def _forward(self, ids: list[int], frames, past, start: int):
        """Prefill or decode `ids` at positions start.. of `past` -> ((1, V) last logits, past)."""
        return self.runtime.forward(ids, frames, past, start), past

    def _new_cache(self):
        return self.runtime.new_cache()

    def stream(self, conv: Conversation, options: GenerationOptions = GenerationOptions()) -> Iterator[StreamChunk]:
        options = options.validate()
        t0 = time.perf_counter()
        if not conv.turns or conv.turns[-1].role != "user":
            raise ValueError("the conversation must end with a user turn")
        cache = self.cache_for(conv.id)
        with cache.lock:
            if options.num_beams > 1:
                yield from self._beam(conv, cache, options, t0)
            else:
                yield from self._stream_cached(conv, cache, options, t0)
        self.caches.trim(keep=conv.id)

    def _resume(self, cache: ChatCache, plan: PromptPlan) -> tuple[int, object]:
        """How many positions this turn need not prefill, and a cache holding them: the conversation's
        own cache cropped to what still matches, else a copy of the shared prompt start, else none."""
        held = self.runtime.held(cache.past) if cache.past is not None else 0
        own = min(common_prefix(cache.keys[:held], plan.keys), len(plan.ids) - 1)
        if self.prefixes is not None and own < plan.shared < len(plan.ids):
            seed = self.prefixes.copy(plan.shared_keys)
            if seed is not None:
                return plan.shared, seed
        if own == 0:
            return 0, self._new_cache()
        cache.keys = cache.keys[:own]
        return own, self.runtime.crop(cache.past, own)

    def _stream_cached(self, conv, cache: ChatCache, options, t0) -> Iterator[StreamChunk]:
        conv, plan, notices = self.prompting.fit_context(conv, cache, options.max_new_tokens, self.max_context)
        reuse, past = self._resume(cache, plan)
        new_ids = plan.ids[reuse:]
        logits, past = self._forward(new_ids, plan.frames_from(reuse), past, reuse)
        if self.prefixes is not None and reuse < plan.shared:  # this turn prefilled the shared start
            self.prefixes.add(plan.shared_keys, past)
        cache.past, cache.keys = past, list(plan.keys)
        rng = make_rng(options, self.device)
        stream = TextStream(self.tokenizer, self.template.stop_strings, [])
        ttft, generated, finish = None, [], "length"
        while len(generated) < options.max_new_tokens:
            tok = int(pick_next(logits, options, [generated], len(generated), self.stop_ids, rng)[0])
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            if tok in self.stop_ids:
                finish = "stop"
                break
            generated.append(tok)
            delta = stream.push(tok)
            if options.loop_guard and (kept := cut_loop(generated)) is not None:
                generated, finish = kept, "loop"  # the repeats are dropped; the answer ends here
                stream.ids = list(kept)
                break
            if delta:
                yield StreamChunk(delta, stream.final_text())
            if stream.stopped:
                finish = "stop"
                break
            if len(generated) == options.max_new_tokens:
                break
            logits, past = self._forward([tok], None, past, len(cache.keys))
            cache.keys.append(("t", tok))
        rest = stream.flush()
        text = stream.final_text()
        cache.reply_ids[(len(conv.turns), text)] = list(generated) if not stream.stopped else self.tokenize(text)
        resp = Response(text=text, ttft_s=ttft or 0.0, total_s=time.perf_counter() - t0,
                        new_tokens=len(generated) + (finish == "stop"), options=options,
                        prefill_tokens=len(new_ids), cached_tokens=reuse, notices=notices,
                        finish_reason=finish, transcript=self.frontend.transcript(conv, cache))
        yield StreamChunk(rest, text, resp)

    def respond(self, conv: Conversation, options: GenerationOptions = GenerationOptions()) -> Response:
        last = None
        for chunk in self.stream(conv, options):
            last = chunk
        return last.response

    # ---- beams and batches: no cache reuse -------------------------------------------------------
    def _generate_full(self, plans: list[PromptPlan], options: GenerationOptions) -> list[list[int]]:
        """Beam search or a batch of greedy/sampled rows, each from scratch: transformers' `generate`
        over a left-padded batch, or under another runtime `engine.search` over its caches."""
        if self.llm is None:
            if options.num_beams > 1:
                return [beam_search(self.runtime, p, options, self.stop_ids) for p in plans]
            return decode_rows(self.runtime, plans, options, self.stop_ids)
        return self._hf_generate(plans, options)

    @torch.inference_mode()
    def _hf_generate(self, plans: list[PromptPlan], options: GenerationOptions) -> list[list[int]]:
        """Left-padded batch through `generate` (beam search or batched greedy/sampling)."""
        width = max(len(p.ids) for p in plans)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        rows, masks, frames = [], [], []
        for p in plans:
            n_pad = width - len(p.ids)
            rows.append([pad] * n_pad + p.ids)
            masks.append([0] * n_pad + [1] * len(p.ids))
            f = p.frames_from(0)
            if f is not None:
                frames.append(f)
        ids = torch.tensor(rows, device=self.device)
        embeds = self.embed(ids, torch.cat(frames) if frames else None)  # (B, width, d_llm)
        attn = torch.tensor(masks, device=self.device)
        sample = options.temperature > 0
        with seeded(options, self.device):
            out = self.llm.generate(
                inputs_embeds=embeds, attention_mask=attn, max_new_tokens=options.max_new_tokens,
                min_new_tokens=options.min_new_tokens, num_beams=options.num_beams, do_sample=sample,
                temperature=options.temperature if sample else None, top_p=options.top_p if sample else None,
                repetition_penalty=options.repetition_penalty, eos_token_id=self.stop_ids, pad_token_id=pad,
            )
        return [[t for t in row.tolist() if t not in self.stop_ids and t != pad] for row in out]

    def _finish(self, ids: list[int], options: GenerationOptions) -> tuple[str, str]:
        """The text of generated ids and how it ended (loops cut when the guard is on)."""
        kept = cut_loop(ids) if options.loop_guard else None
        stream = TextStream(self.tokenizer, self.template.stop_strings, list(kept if kept is not None else ids))
        return stream.final_text(), "loop" if kept is not None else "stop"

    def _beam(self, conv, cache: ChatCache, options, t0) -> Iterator[StreamChunk]:
        conv, plan, notices = self.prompting.fit_context(conv, cache, options.max_new_tokens, self.max_context)
        ids = self._generate_full([plan], options)[0]
        text, finish = self._finish(ids, options)
        total = time.perf_counter() - t0
        resp = Response(text=text, ttft_s=total, total_s=total, new_tokens=len(ids), options=options,
                        prefill_tokens=len(plan.ids), notices=notices + ("beam search: the answer comes at once",),
                        finish_reason=finish, transcript=self.frontend.transcript(conv, cache))
        yield StreamChunk(text, text, resp)

    def respond_batch(self, convs: list[Conversation], options: GenerationOptions = GenerationOptions(),
                      batch_size: int = 8, on_error: Callable[[int, Exception], None] | None = None) -> list[Response | None]:
        """Independent conversations, batched (evaluation). A row that fails (bad audio) gives
        None and is reported through `on_error`; the others go on."""
        results: list[Response | None] = [None] * len(convs)
        for start in range(0, len(convs), batch_size):
            t0 = time.perf_counter()
            rows = list(range(start, min(start + batch_size, len(convs))))
            scratches = {i: ChatCache() for i in rows}
            self.frontend.prepare_batch([(convs[i], scratches[i]) for i in rows])
            planned = []
            for i in rows:
                try:
                    planned.append((i, self.prompting.fit_context(convs[i], scratches[i], options.max_new_tokens,
                                                                  self.max_context)[1]))
                except Exception as err:  # noqa: BLE001 - reported per row, the batch goes on
                    if on_error is None:
                        raise
                    on_error(i, err)
            if not planned:
                continue
            outs = self._generate_full([plan for _, plan in planned], options)
            total = time.perf_counter() - t0
            for (i, plan), ids in zip(planned, outs):
                text, finish = self._finish(ids, options)
                results[i] = Response(text=text, ttft_s=total, total_s=total, new_tokens=len(ids), options=options,
                                      prefill_tokens=len(plan.ids), finish_reason=finish,
                                      transcript=self.frontend.transcript(convs[i], scratches[i]))
        return results


def stop_token_ids(tokenizer, stop_strings: tuple[str, ...]) -> list[int]:
    """EOS and every stop string that is a single token of this tokenizer."""
    ids = {tokenizer.eos_token_id}
    vocab = tokenizer.get_vocab()
    ids |= {tokenizer.convert_tokens_to_ids(s) for s in stop_strings if s in vocab}
    return sorted(i for i in ids if i is not None)
