"""LLaSM's prompt planner: speech turns enter the LLM as projected Whisper decoder states
(`frontends.LlasmFrames`), in the token layout LLaSM's own code makes.

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

from blsp_demo.conversation import Conversation
from blsp_demo.engine.cache import ChatCache
from blsp_demo.engine.plan import PromptPlan, Prompting
from blsp_demo.model.tokens import AUDIO_PATCH, AUDIO_TOKENS, SPEECH_PLACEHOLDER, audio_text
from blsp_demo.prompts import Bos, Piece, PromptTemplate, Reply, Speech, Text, render


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


def check_audio_tokens(tokenizer) -> int:
    """The id of `<au_patch>`; a clear error when the tokenizer lacks LLaSM's audio tokens."""
    missing = [t for t in AUDIO_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"the tokenizer lacks LLaSM's audio tokens {missing}; add them with "
                         f"tokenizer.add_tokens (in the order {list(AUDIO_TOKENS)})")
    return tokenizer.convert_tokens_to_ids(AUDIO_PATCH)


def plan_calls(p: Prompting, conv: Conversation, cache: ChatCache) -> PromptPlan:
    """The planner of the `llasm-calls` templates: pieces grouped into LLaSM's tokenizer calls;
    each call's `<au_patch>` tokens become placeholders, 64 a window, filled in order."""
    front = p.frontend
    ids: list[int] = []
    keys: list[tuple] = []
    speech: list[tuple[int, torch.Tensor]] = []
    for call in tokenizer_calls(render(p.template, stripped(conv)), p.template):
        audio = [front.speech_frames(conv.turns[s.turn_index].clip, cache) for s in call.parts if isinstance(s, Speech)]
        new = ([p.tokenizer.bos_token_id] if call.bos else []) + _call_ids(p, call, audio, cache)
        slots = [i for i, t in enumerate(new) if t == front.patch_id]
        akeys = [(akey, j) for akey, f in audio for j in range(f.shape[0])]
        if len(slots) != len(akeys):
            raise ValueError(f"a turn holds {len(slots) - len(akeys)} {AUDIO_PATCH} tokens besides its "
                             f"audio; remove them from the text")
        if audio:
            frames = torch.cat([f for _, f in audio])  # (64 x windows, d_llm)
            for k in range(0, len(slots), front.audio_token_len):  # each window: 64 positions in a row
                speech.append((len(ids) + slots[k], frames[k:k + front.audio_token_len]))
        by_slot = dict(zip(slots, akeys))
        keys += [("s", *by_slot[i]) if i in by_slot else ("t", t) for i, t in enumerate(new)]
        ids += [SPEECH_PLACEHOLDER if i in by_slot else t for i, t in enumerate(new)]
    return PromptPlan(ids, keys, speech)


def _call_ids(p: Prompting, call: Call, frames: list[tuple[str, torch.Tensor]], cache: ChatCache) -> list[int]:
    n = p.frontend.audio_token_len
    windows = iter([f.shape[0] // n for _, f in frames])
    text = "".join(s if isinstance(s, str) else audio_text(next(windows), n) for s in call.parts)
    if call.reply is None:
        return p.tokenize(text) if text else []
    known = cache.reply_ids.get((call.reply.turn_index, call.reply.text))
    if known is None:
        return p.tokenize(call.reply.text.strip() + text)
    # The answer as generated (its trailing space is usually its last token), then the suffix's EOS.
    return list(known) + (p.tokenize(text.lstrip()) if text.strip() else [])
