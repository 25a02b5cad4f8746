"""Engines: one interface (`respond` / `stream` / `respond_batch`) over a conversation.

- `BlspEngine`: speech turns become speech embeddings inside the LLM's prompt (BLSP).
- `CascadeEngine`: Whisper transcribes each speech turn; the transcript goes to the same LLM.
- `TextEngine`: the known transcript goes to the LLM (the paper's Text+LLM upper bound).

Each conversation keeps its own KV cache (`ChatCache`, found by conversation id and checked
position by position), so a new turn prefills only the positions the cache does not hold: the
new turn's tokens and speech. A reset, an edit or another conversation can never reuse positions
that differ, because every cached position carries a key (token id, or audio hash + frame index).
The one thing conversations share is the KV cache of the prompt's conversation-independent start
(BOS, system prompt: `PrefixCaches`), looked up by its keys and copied into a new conversation.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch

from .audio import AudioError, AudioLimits, load_audio, sha256_bytes, split_windows
from .config import GenerationOptions, Response
from .conversation import Conversation, Turn
from .decoding import TextStream, make_rng, pick_next
from .model.blsp import SPEECH_PLACEHOLDER
from .model.encoder import log_mel
from .prompts import Bos, Piece, PromptTemplate, Reply, Speech, Text, render

Key = tuple  # ("t", token_id) or ("s", audio_fingerprint, frame_index)


@dataclass(frozen=True)
class StreamChunk:
    delta: str  # new text since the last chunk
    text: str  # the reply so far
    response: Response | None = None  # set on the last chunk


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


@dataclass
class ChatCache:
    """A conversation's KV cache and memos. Owned by one conversation id."""

    past: object | None = None  # transformers DynamicCache
    keys: list[Key] = field(default_factory=list)
    reply_ids: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (turn, reply) -> ids as generated
    speech: dict[str, torch.Tensor] = field(default_factory=dict)  # audio key -> (S, d_llm)
    transcripts: dict[str, str] = field(default_factory=dict)  # audio key -> ASR text
    lock: threading.Lock = field(default_factory=threading.Lock)


class Engine(Protocol):
    name: str
    model_id: str

    def stream(self, conv: Conversation, options: GenerationOptions) -> Iterator[StreamChunk]: ...

    def respond(self, conv: Conversation, options: GenerationOptions) -> Response: ...


def audio_key(path: str) -> str:
    """Content hash of an audio file: the same recording is encoded once per conversation."""
    try:
        return sha256_bytes(path)
    except (FileNotFoundError, IsADirectoryError):
        raise AudioError("not_found", f"The audio file {Path(path).name!r} does not exist.") from None


def common_prefix(a: list[Key], b: list[Key]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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


@torch.inference_mode()
def cache_prefix(past, n: int) -> object | None:
    """A new DynamicCache with the first n positions of `past`, in tensors of its own (a cropped view
    would keep the whole prompt's memory). None when a layer is not a plain full-attention one
    (sliding window, linear attention): copying those is not this function's business."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = getattr(past, "layers", None)
    if not layers or getattr(past, "offloading", False) or any(
            type(layer) is not DynamicLayer or layer.get_seq_length() < n for layer in layers):
        return None
    out = DynamicCache()
    for i, layer in enumerate(layers):
        out.update(layer.keys[..., :n, :].clone(), layer.values[..., :n, :].clone(), i)  # (B, H_kv, n, d_head)
    return out


class PrefixCaches:
    """KV caches of conversation-independent prompt starts (BOS, system prompt), shared by all the
    conversations of one engine: keys of the positions -> a DynamicCache holding only them. The
    caches held here are never handed out, only copied: decoding appends to a conversation's cache."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._caches: OrderedDict[tuple[Key, ...], object] = OrderedDict()
        self._lock = threading.Lock()

    def copy(self, keys: tuple[Key, ...]) -> object | None:
        """A copy of the cache for these positions (a DynamicCache), or None."""
        with self._lock:
            past = self._caches.get(keys)
            if past is not None:
                self._caches.move_to_end(keys)  # most recently used last
        return None if past is None else cache_prefix(past, len(keys))

    def __contains__(self, keys: tuple[Key, ...]) -> bool:
        with self._lock:
            return keys in self._caches

    def add(self, keys: tuple[Key, ...], past) -> None:
        """Keep a copy of the first len(keys) positions of `past` (a conversation's cache)."""
        if not keys or keys in self:
            return
        prefix = cache_prefix(past, len(keys))
        if prefix is None:
            return
        with self._lock:
            self._caches.setdefault(keys, prefix)
            while len(self._caches) > self.capacity:
                self._caches.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._caches)


class ChatEngine:
    """Shared machinery: prompt planning, the per-conversation cache, decoding."""

    name = "chat"

    def __init__(self, llm, tokenizer, template: PromptTemplate, *, model_id: str, revision: str = "",
                 device: torch.device | None = None, max_context: int | None = None,
                 audio_limits: AudioLimits = AudioLimits(), max_cached_conversations: int = 32,
                 share_prefix: bool = True, max_shared_prefixes: int = 8):
        self.llm = llm.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.model_id = model_id
        self.revision = revision
        self.device = device or next(llm.parameters()).device
        ctx = getattr(llm.config, "max_position_embeddings", 2048)
        self.max_context = min(max_context or ctx, ctx)
        self.audio_limits = audio_limits
        self._caches: OrderedDict[str, ChatCache] = OrderedDict()
        self._caches_lock = threading.Lock()
        self._max_cached = max_cached_conversations
        self.prefixes = PrefixCaches(max_shared_prefixes) if share_prefix else None
        self.stop_ids = self._stop_ids()
        # Only the last position's logits are needed (a 24-position prefill would otherwise compute
        # 24 x vocab logits); LLMs whose forward lacks the argument (remote code) compute them all.
        self._last_logits_only = ({"logits_to_keep": 1} if "logits_to_keep" in
                                  inspect.signature(self.llm.forward).parameters else {})

    # ---- per-conversation caches -----------------------------------------------------------
    def cache_for(self, conv_id: str) -> ChatCache:
        with self._caches_lock:
            cache = self._caches.pop(conv_id, None) or ChatCache()
            self._caches[conv_id] = cache  # most recently used last
            while len(self._caches) > self._max_cached:
                self._caches.popitem(last=False)
            return cache

    def forget(self, conv_id: str) -> None:
        """Drop a conversation's cache (the shared prompt starts stay: they hold no conversation)."""
        with self._caches_lock:
            self._caches.pop(conv_id, None)

    # ---- hooks for subclasses ------------------------------------------------------------
    def speech_texts(self, conv: Conversation, cache: ChatCache) -> dict[int, str]:
        """Speech turns to replace by text (cascade: ASR, text: transcripts). BLSP: none."""
        return {}

    def prepare_batch(self, rows: list[tuple[Conversation, "ChatCache"]]) -> None:
        """Work that is cheaper for many conversations at once (cascade: batched ASR), done before
        each row is planned. A failure here is never fatal: the row's own planning reports it."""

    def speech_frames(self, turn: Turn, cache: ChatCache) -> tuple[str, torch.Tensor]:
        raise ValueError(f"the {self.name} engine cannot take speech embeddings")

    def embed(self, ids: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
        if frames is not None:
            raise ValueError("speech frames given to a text-only LLM")
        return self.llm.get_input_embeddings()(ids)

    # ---- planning ----------------------------------------------------------------------------
    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for s in self.template.stop_strings:
            tok = self.tokenizer.convert_tokens_to_ids(s) if s in self.tokenizer.get_vocab() else None
            if tok is not None:
                ids.add(tok)
        return sorted(i for i in ids if i is not None)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def plan(self, conv: Conversation, cache: ChatCache) -> PromptPlan:
        pieces: list[Piece] = render(self.template, conv, self.speech_texts(conv, cache))
        system = conv.system if conv.system is not None else self.template.system_default
        n_shared = shared_piece_count(self.template, system, pieces)
        ids: list[int] = []
        keys: list[Key] = []
        speech: list[tuple[int, torch.Tensor]] = []
        shared = 0
        for n, piece in enumerate(pieces):
            if n == n_shared:
                shared = len(ids)
            if isinstance(piece, Speech):
                akey, frames = self.speech_frames(conv.turns[piece.turn_index], cache)
                speech.append((len(ids), frames))
                ids += [SPEECH_PLACEHOLDER] * frames.shape[0]
                keys += [("s", akey, j) for j in range(frames.shape[0])]
                continue
            if isinstance(piece, Bos):
                new = [self.tokenizer.bos_token_id]
            elif isinstance(piece, Reply):
                known = cache.reply_ids.get((piece.turn_index, piece.text))
                new = known if known is not None else self.tokenize(piece.text)
            else:
                new = self.tokenize(piece.text)
            ids += new
            keys += [("t", t) for t in new]
        return PromptPlan(ids, keys, speech, shared)

    def fit_context(self, conv: Conversation, cache: ChatCache, max_new: int) -> tuple[Conversation, PromptPlan, tuple[str, ...]]:
        """Drop the oldest exchanges until the prompt plus the answer fits the context."""
        plan = self.plan(conv, cache)
        dropped = 0
        while len(plan.ids) + max_new > self.max_context:
            users = [i for i, t in enumerate(conv.turns) if t.role == "user"]
            if len(users) <= 1:
                raise ValueError(f"this turn needs {len(plan.ids)} prompt positions plus {max_new} new tokens, "
                                 f"more than the model's context of {self.max_context}; shorten it")
            conv = Conversation(turns=conv.turns[users[1]:], system=conv.system, id=conv.id)
            dropped += users[1]
            plan = self.plan(conv, cache)
        notices = (f"Dropped the {dropped} oldest turns to fit the model's {self.max_context}-position context.",) if dropped else ()
        return conv, plan, notices

    # ---- running the LLM ---------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, ids: list[int], frames, past, start: int, mask_len: int):
        x = torch.tensor([ids], device=self.device)
        embeds = self.embed(x, frames)  # (1, L_new, d_llm)
        positions = torch.arange(start, start + len(ids), device=self.device)[None]
        attn = torch.ones(1, mask_len, dtype=torch.long, device=self.device)
        out = self.llm(inputs_embeds=embeds, attention_mask=attn, position_ids=positions,
                       past_key_values=past, use_cache=True, **self._last_logits_only)
        return out.logits[:, -1], out.past_key_values

    def _new_cache(self):
        from transformers import DynamicCache
        return DynamicCache(config=self.llm.config)

    def stream(self, conv: Conversation, options: GenerationOptions = GenerationOptions()) -> Iterator[StreamChunk]:
        options = options.validate()
        t0 = time.perf_counter()
        if not conv.turns or conv.turns[-1].role != "user":
            raise ValueError("the conversation must end with a user turn")
        cache = self.cache_for(conv.id)
        with cache.lock:
            if options.num_beams > 1:
                yield from self._beam(conv, cache, options, t0)
                return
            yield from self._stream_cached(conv, cache, options, t0)

    def _resume(self, cache: ChatCache, plan: PromptPlan) -> tuple[int, object]:
        """How many positions this turn need not prefill, and a cache holding them: the conversation's
        own cache cropped to what still matches, else a copy of the shared prompt start, else none."""
        own = min(common_prefix(cache.keys, plan.keys), len(plan.ids) - 1) if cache.past is not None else 0
        if self.prefixes is not None and own < plan.shared < len(plan.ids):
            seed = self.prefixes.copy(plan.shared_keys)
            if seed is not None:
                return plan.shared, seed
        if own == 0:
            return 0, self._new_cache()
        cache.past.crop(own - cache.past.get_seq_length())  # a negative count removes positions
        cache.keys = cache.keys[:own]
        return own, cache.past

    def _stream_cached(self, conv, cache: ChatCache, options, t0) -> Iterator[StreamChunk]:
        conv, plan, notices = self.fit_context(conv, cache, options.max_new_tokens)
        reuse, past = self._resume(cache, plan)
        new_ids = plan.ids[reuse:]
        logits, past = self._forward(new_ids, plan.frames_from(reuse), past, reuse, len(plan.ids))
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
            if delta:
                yield StreamChunk(delta, stream.final_text())
            if stream.stopped:
                finish = "stop"
                break
            if len(generated) == options.max_new_tokens:
                break
            logits, past = self._forward([tok], None, past, len(cache.keys), len(cache.keys) + 1)
            cache.keys.append(("t", tok))
        rest = stream.flush()
        text = stream.final_text()
        cache.reply_ids[(len(conv.turns), text)] = list(generated) if not stream.stopped else self.tokenize(text)
        resp = Response(text=text, ttft_s=ttft or 0.0, total_s=time.perf_counter() - t0,
                        new_tokens=len(generated) + (finish == "stop"), options=options,
                        prefill_tokens=len(new_ids), cached_tokens=reuse, notices=notices,
                        finish_reason=finish, transcript=self.last_transcript(conv, cache))
        yield StreamChunk(rest, text, resp)

    def last_transcript(self, conv: Conversation, cache: ChatCache) -> str | None:
        return None

    def respond(self, conv: Conversation, options: GenerationOptions = GenerationOptions()) -> Response:
        last = None
        for chunk in self.stream(conv, options):
            last = chunk
        return last.response

    # ---- beams and batches: no cache reuse -----------------------------------------------------
    @torch.inference_mode()
    def _generate_full(self, plans: list[PromptPlan], options: GenerationOptions) -> list[list[int]]:
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
        embeds = self.embed(ids, torch.cat(frames) if frames else None)
        attn = torch.tensor(masks, device=self.device)
        sample = options.temperature > 0
        if options.seed is not None:
            torch.manual_seed(options.seed)
        out = self.llm.generate(
            inputs_embeds=embeds, attention_mask=attn, max_new_tokens=options.max_new_tokens,
            min_new_tokens=options.min_new_tokens, num_beams=options.num_beams, do_sample=sample,
            temperature=options.temperature if sample else None, top_p=options.top_p if sample else None,
            repetition_penalty=options.repetition_penalty, eos_token_id=self.stop_ids, pad_token_id=pad,
        )
        return [[t for t in row.tolist() if t not in self.stop_ids and t != pad] for row in out]

    def _finish_text(self, ids: list[int]) -> str:
        stream = TextStream(self.tokenizer, self.template.stop_strings, list(ids))
        return stream.final_text()

    def _beam(self, conv, cache: ChatCache, options, t0) -> Iterator[StreamChunk]:
        conv, plan, notices = self.fit_context(conv, cache, options.max_new_tokens)
        ids = self._generate_full([plan], options)[0]
        text = self._finish_text(ids)
        total = time.perf_counter() - t0
        resp = Response(text=text, ttft_s=total, total_s=total, new_tokens=len(ids), options=options,
                        prefill_tokens=len(plan.ids), notices=notices + ("beam search: the answer comes at once",),
                        transcript=self.last_transcript(conv, cache))
        yield StreamChunk(text, text, resp)

    def respond_batch(self, convs: list[Conversation], options: GenerationOptions = GenerationOptions(),
                      batch_size: int = 8, on_error: Callable[[int, Exception], None] | None = None) -> list[Response | None]:
        """Independent conversations, batched (evaluation). A row that fails (bad audio) gives
        None and is reported through `on_error`; the others go on."""
        results: list[Response | None] = [None] * len(convs)
        for start in range(0, len(convs), batch_size):
            t0 = time.perf_counter()
            idx, plans = [], []
            rows = list(range(start, min(start + batch_size, len(convs))))
            scratches = {i: ChatCache() for i in rows}
            self.prepare_batch([(convs[i], scratches[i]) for i in rows])
            for i in rows:
                try:
                    scratch = scratches[i]
                    _, plan, _ = self.fit_context(convs[i], scratch, options.max_new_tokens)
                    idx.append((i, scratch))
                    plans.append(plan)
                except Exception as err:  # noqa: BLE001 - reported per row, the batch goes on
                    if on_error is None:
                        raise
                    on_error(i, err)
            if not plans:
                continue
            outs = self._generate_full(plans, options)
            total = time.perf_counter() - t0
            for (i, scratch), plan, ids in zip(idx, plans, outs):
                results[i] = Response(text=self._finish_text(ids), ttft_s=total, total_s=total,
                                      new_tokens=len(ids), options=options, prefill_tokens=len(plan.ids),
                                      transcript=self.last_transcript(convs[i], scratch))
        return results


class BlspEngine(ChatEngine):
    """BLSP: speech turns enter the LLM as adapter outputs."""

    name = "blsp"

    def __init__(self, model, tokenizer, feature_extractor, *, window: str | None = None, **kw):
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.window = window or model.config.encoder_window
        super().__init__(model.llama_model, tokenizer, kw.pop("template"), **kw)

    def embed(self, ids, frames):
        return self.model.embed_with_speech(ids, frames)

    @torch.inference_mode()
    def speech_frames(self, turn: Turn, cache: ChatCache) -> tuple[str, torch.Tensor]:
        key = f"{audio_key(turn.audio)}:{self.window}"
        if key not in cache.speech:
            samples = load_audio(turn.audio, self.audio_limits)
            cache.speech[key] = self.encode_samples(samples)
        return key, cache.speech[key]

    @torch.inference_mode()
    def encode_samples(self, samples) -> torch.Tensor:
        """16 kHz audio of any length -> (S, d_llm); 30 s windows are encoded apart and joined."""
        parts = []
        for window in split_windows(samples):
            features, frames = log_mel(self.feature_extractor, window, self.window)
            dtype = next(self.model.subsampler.parameters()).dtype
            emb, lengths = self.model.speech_embeddings(features.to(self.device, dtype), frames.to(self.device),
                                                        self.window)  # (1, S, d_llm)
            parts.append(emb[0, : int(lengths[0])])
        return torch.cat(parts)


class CascadeEngine(ChatEngine):
    """Whisper+LLM: each speech turn is transcribed, then the LLM reads the transcript."""

    name = "cascade"

    def __init__(self, llm, tokenizer, template, asr, **kw):
        self.asr = asr  # callable: 16 kHz float32 samples -> text; optional `asr.batch(list) -> list`
        # One transcription at a time: openai-whisper decodes through forward hooks installed on the
        # shared model, so two at once feed each other's key/value caches (KeyError, or one
        # session's words in another's transcript).
        self._asr_lock = threading.Lock()
        super().__init__(llm, tokenizer, template, **kw)

    def prepare_batch(self, rows):
        """One batched ASR call for every untranscribed speech turn of the rows (when the ASR can)."""
        batch = getattr(self.asr, "batch", None)
        if batch is None:
            return
        todo: dict[str, tuple[object, list]] = {}  # audio key -> (samples, caches wanting it)
        for conv, cache in rows:
            for turn in conv.turns:
                if turn.role != "user" or turn.audio is None:
                    continue
                try:
                    key = audio_key(turn.audio)
                    if key in cache.transcripts:
                        continue
                    if key not in todo:
                        todo[key] = (load_audio(turn.audio, self.audio_limits), [])
                    todo[key][1].append(cache)
                except Exception:  # noqa: BLE001 - bad audio: the row's own planning reports it
                    continue
        if not todo:
            return
        with self._asr_lock:
            texts = batch([samples for samples, _ in todo.values()])
        for (key, (_, caches)), text in zip(todo.items(), texts):
            for cache in caches:
                cache.transcripts[key] = text.strip()

    def speech_texts(self, conv, cache):
        texts = {}
        for i, turn in enumerate(conv.turns):
            if turn.role == "user" and turn.audio is not None:
                key = audio_key(turn.audio)
                if key not in cache.transcripts:
                    samples = load_audio(turn.audio, self.audio_limits)
                    with self._asr_lock:
                        cache.transcripts[key] = self.asr(samples).strip()
                texts[i] = cache.transcripts[key]
        return texts

    def last_transcript(self, conv, cache):
        turn = conv.last_user
        if turn is None or turn.audio is None:
            return None
        return cache.transcripts.get(audio_key(turn.audio))


class TextEngine(ChatEngine):
    """Text+LLM: the known transcript of each speech turn goes to the LLM."""

    name = "text"

    def speech_texts(self, conv, cache):
        texts = {}
        for i, turn in enumerate(conv.turns):
            if turn.role == "user" and turn.audio is not None:
                if not turn.transcript:
                    raise ValueError("the text engine needs the transcript of every speech turn; "
                                     "this one has none (use the blsp or cascade engine)")
                texts[i] = turn.transcript
        return texts

    def last_transcript(self, conv, cache):
        turn = conv.last_user
        return turn.transcript if turn is not None else None
