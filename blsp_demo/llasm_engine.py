"""The LLaSM engine: speech turns enter the LLM as projected Whisper decoder states.

How a conversation becomes token ids (LinkSoul-AI/LLaSM `infer_tokenize.py`, generalized to many
turns; LLaSM's own demo and `infer.py` answer one speech turn):

- A speech turn's content is `<au_start>` + 64 x `<au_patch>` + `<au_end>` (one such block per
  30 s window), after the turn's instruction if it has one. The `<au_patch>` ids become
  `SPEECH_PLACEHOLDER` positions, filled with `mm_projector(Whisper decoder states)`; the cache
  keys of those positions are the audio's hash, so the KV cache works as for BLSP.
- `llasm-llama2` (LLaSM-Cllama2): the system text `<<SYS>>\\n{system}\\n<</SYS>>\\n\\n` on its own
  (no BOS), then every human turn as one `tokenizer.encode` call with BOS:
  `[INST] {content} [/INST] ` (the first turn's content starts with the system text again, as the
  official code does), every earlier answer as `{answer} ` + EOS.
- `baichuan` (LLaSM-Baichuan): BOS, the system text, then `USER:`, content, `ASSISTANT:`, and
  `{answer}</s>` for earlier answers, each part encoded on its own, with no separators.
- Contents are stripped. An answer this engine generated keeps its generated ids (the cache holds
  them), followed by EOS; an answer typed or loaded is tokenized by the rule above.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .audio import load_audio, split_windows
from .conversation import Conversation, Turn
from .engine import ChatCache, ChatEngine, PromptPlan, audio_key
from .model.blsp import SPEECH_PLACEHOLDER
from .model.llasm import AUDIO_PATCH, AUDIO_TOKENS, AudioTower, LlasmForCausalLM, audio_text
from .prompts import Bos, Piece, PromptTemplate, Reply, Speech, Text, render


@dataclass
class Call:
    """One tokenizer call of LLaSM's rules: text and speech parts encoded together."""

    bos: bool = False
    parts: list[str | Speech] = field(default_factory=list)
    reply: Reply | None = None  # an earlier answer (then `parts` holds the text after it)


def tokenizer_calls(pieces: list[Piece], tpl: PromptTemplate) -> list[Call]:
    """Group rendered pieces into the calls LLaSM's `tokenize_*` functions make: a BOS or an earlier
    answer opens a call; the assistant suffix joins the answer before it; the rest of a user turn
    joins its BOS call when the template encodes a turn in one call, else each part is a call."""
    calls: list[Call] = []
    for piece in pieces:
        last = calls[-1] if calls else None
        if isinstance(piece, (Bos, Reply)):
            calls.append(Call(bos=isinstance(piece, Bos), reply=piece if isinstance(piece, Reply) else None))
            continue
        part = piece.text if isinstance(piece, Text) else piece
        after_answer = last is not None and last.reply is not None and not last.parts and part == tpl.assistant_suffix
        in_turn = last is not None and last.bos and tpl.user_turn_one_call
        if after_answer or in_turn:
            last.parts.append(part)
        else:
            calls.append(Call(parts=[part]))
    return calls


def stripped(conv: Conversation) -> Conversation:
    """User contents stripped, as the official code strips each turn."""
    turns = tuple(replace(t, text=t.text.strip()) if t.role == "user" else t for t in conv.turns)
    return replace(conv, turns=turns)


class LlasmEngine(ChatEngine):
    """LLaSM: Whisper (encoder + decoder over 64 start tokens) -> mm_projector -> Llama."""

    name = "llasm"

    def __init__(self, model: LlasmForCausalLM, tokenizer, tower: AudioTower, *, template: PromptTemplate, **kw):
        self.model = model.eval()
        self.tower = tower
        self.audio_token_len = model.config.audio_token_len
        missing = [t for t in AUDIO_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the tokenizer lacks LLaSM's audio tokens {missing}; add them with "
                             f"tokenizer.add_tokens (in the order {list(AUDIO_TOKENS)})")
        self.patch_id = tokenizer.convert_tokens_to_ids(AUDIO_PATCH)
        super().__init__(model, tokenizer, template, **kw)

    def embed(self, ids, frames):
        return self.model.embed_with_speech(ids, frames)

    # ---- speech ----------------------------------------------------------------------------
    @torch.inference_mode()
    def speech_frames(self, turn: Turn, cache: ChatCache) -> tuple[str, torch.Tensor]:
        key = f"{audio_key(turn.audio)}:llasm"
        if key not in cache.speech:
            cache.speech[key] = self.encode_samples(load_audio(turn.audio, self.audio_limits))
        return key, cache.speech[key]

    @torch.inference_mode()
    def encode_samples(self, samples) -> torch.Tensor:
        """16 kHz audio -> (64 x windows, d_llm): each 30 s window gives 64 projected decoder states."""
        states = self.tower(self.tower.features(split_windows(samples)))  # (N, 64, d_whisper)
        return self.model.project_audio(states.to(self.device)).flatten(0, 1)  # (N*64, d_llm)

    # ---- planning ----------------------------------------------------------------------------
    def plan(self, conv: Conversation, cache: ChatCache) -> PromptPlan:
        ids: list[int] = []
        keys: list[tuple] = []
        speech: list[tuple[int, torch.Tensor]] = []
        for call in tokenizer_calls(render(self.template, stripped(conv)), self.template):
            audio = [self.speech_frames(conv.turns[p.turn_index], cache) for p in call.parts if isinstance(p, Speech)]
            new = ([self.tokenizer.bos_token_id] if call.bos else []) + self._call_ids(call, audio, cache)
            slots = [i for i, t in enumerate(new) if t == self.patch_id]
            akeys = [(akey, j) for akey, f in audio for j in range(f.shape[0])]
            if len(slots) != len(akeys):
                raise ValueError(f"a turn holds {len(slots) - len(akeys)} {AUDIO_PATCH} tokens besides its "
                                 f"audio; remove them from the text")
            if audio:
                frames = torch.cat([f for _, f in audio])  # (64 x windows, d_llm)
                for k in range(0, len(slots), self.audio_token_len):  # each window: 64 positions in a row
                    speech.append((len(ids) + slots[k], frames[k:k + self.audio_token_len]))
            by_slot = dict(zip(slots, akeys))
            keys += [("s", *by_slot[i]) if i in by_slot else ("t", t) for i, t in enumerate(new)]
            ids += [SPEECH_PLACEHOLDER if i in by_slot else t for i, t in enumerate(new)]
        return PromptPlan(ids, keys, speech)

    def _call_ids(self, call: Call, frames: list[tuple[str, torch.Tensor]], cache: ChatCache) -> list[int]:
        windows = iter([f.shape[0] // self.audio_token_len for _, f in frames])
        text = "".join(p if isinstance(p, str) else audio_text(next(windows), self.audio_token_len)
                       for p in call.parts)
        if call.reply is None:
            return self.tokenize(text) if text else []
        known = cache.reply_ids.get((call.reply.turn_index, call.reply.text))
        if known is None:
            return self.tokenize(call.reply.text.strip() + text)
        # The answer as generated (its trailing space is usually its last token), then the suffix's EOS.
        return list(known) + (self.tokenize(text.lstrip()) if text.strip() else [])
