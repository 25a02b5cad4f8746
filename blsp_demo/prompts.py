"""Prompt templates as data, and rendering a conversation into prompt pieces.

A rendered prompt is a list of pieces: text to tokenize (each piece on its own, without BOS,
as the official BLSP code does), a BOS marker, a speech placeholder (filled with speech
embeddings later), or an assistant reply (whose token ids the engine may already know).
Which template a model uses comes from its config (`prompt_template`), never from its name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from blsp_demo.conversation import Conversation, Turn


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    bos_at_start: bool  # one BOS before everything (official BLSP, Llama)
    bos_per_user_turn: bool  # a BOS before every human turn (Llama-2 [INST] chats)
    system_default: str  # "" for none
    system_format: str  # "{system}" is replaced; placed before the first user turn
    system_inline: bool  # True: system text goes inside the first user turn (Llama-2 <<SYS>>)
    user_prefix: str
    user_suffix: str  # ends with what opens the assistant's reply
    assistant_suffix: str  # after a finished reply, before the next user turn
    instruction_sep: str  # between an instruction and the speech/transcript after it
    join_instruction_to_prefix: bool  # official BLSP tokenizes "###[Human]:{instruction}" as one piece
    stop_strings: tuple[str, ...]  # besides the tokenizer's EOS
    tokenization: str = "pieces"  # how pieces become ids: a key of `engine.plan.PLANNERS`
    # LLaSM's tokenization rules (`blsp_demo.engine.llasm`); the other templates leave them off:
    system_repeated: bool = False  # the system text also comes first, alone (LLaSM's Llama-2 code does both)
    user_turn_one_call: bool = False  # a whole user turn, BOS and speech included, is one tokenizer call


TEMPLATES: dict[str, PromptTemplate] = {
    "blsp": PromptTemplate(
        name="blsp", bos_at_start=True, bos_per_user_turn=False,
        system_default="", system_format="{system}", system_inline=False,
        user_prefix="###[Human]:", user_suffix="\n\n\n###[Assistant]:", assistant_suffix="\n\n\n",
        instruction_sep="", join_instruction_to_prefix=True, stop_strings=("###[Human]",),
    ),
    "chatml": PromptTemplate(
        name="chatml", bos_at_start=False, bos_per_user_turn=False,
        system_default="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        system_format="<|im_start|>system\n{system}<|im_end|>\n", system_inline=False,
        user_prefix="<|im_start|>user\n", user_suffix="<|im_end|>\n<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>\n", instruction_sep="\n", join_instruction_to_prefix=False,
        stop_strings=("<|im_end|>",),
    ),
    "llama2-inst": PromptTemplate(
        name="llama2-inst", bos_at_start=False, bos_per_user_turn=True,
        system_default=("You are a helpful language and speech assistant. You are able to understand the "
                        "speech content that the user provides, and assist the user with a variety of "
                        "tasks using natural language."),
        system_format="<<SYS>>\n{system}\n<</SYS>>\n\n", system_inline=True,
        user_prefix="[INST] ", user_suffix=" [/INST] ", assistant_suffix=" </s>",
        instruction_sep="\n", join_instruction_to_prefix=False, stop_strings=(),
    ),
}
# Qwen2.5 instruct models: ChatML. Qwen's own default ("You are Qwen, created by Alibaba Cloud. You
# are a helpful assistant.") made the Coder model refuse plain questions ("I'm sorry, but I can't
# assist with that."); the voice-assistant prompt below was chosen on the spoken dev questions.
QWEN_VOICE_SYSTEM = ("You are a helpful voice assistant. The user speaks to you; their words may be slightly "
                     "misheard. Answer every question directly, in one short sentence.")
TEMPLATES["qwen-chatml"] = replace(TEMPLATES["chatml"], name="qwen-chatml", system_default=QWEN_VOICE_SYSTEM)
# LLaSM (LinkSoul-AI/LLaSM `infer_tokenize.py`). Chinese-Llama-2: llama2-inst, with the system text
# both first on its own and inside the first [INST], and each human turn encoded in one call.
TEMPLATES["llasm-llama2"] = replace(TEMPLATES["llama2-inst"], name="llasm-llama2", system_repeated=True,
                                    user_turn_one_call=True, tokenization="llasm-calls")
# Baichuan-7B: BOS, the system text, then `USER:` / `ASSISTANT:` role prefixes with no separators;
# every part is its own tokenizer call; a reply ends with `</s>`.
TEMPLATES["baichuan"] = PromptTemplate(
    name="baichuan", bos_at_start=True, bos_per_user_turn=False,
    system_default=TEMPLATES["llama2-inst"].system_default, system_format="{system}", system_inline=False,
    user_prefix="USER:", user_suffix="ASSISTANT:", assistant_suffix="</s>",
    instruction_sep="\n", join_instruction_to_prefix=False, stop_strings=("USER:",), tokenization="llasm-calls",
)

# The paper's task instructions (Table 1 and Table 11), as presets.
INSTRUCTIONS: dict[str, str] = {
    "none": "",
    "continue": "Continue the following text in a coherent and engaging style with less than 40 words.",
    "repeat": "Please repeat the following words.",
    "translate": "Please translate the following English text into {target} text.",
    "intent": ("Please classify the intent of the following utterance. Answer with one of these "
               "intents: {labels}."),
    "sentiment": ("Is the sentiment of the following text positive, negative, or neutral? "
                  "Answer with one word."),
    "qa": "Please answer the following question.",
}


def instruction_text(task: str, **fields: str) -> str:
    """A preset instruction with its fields filled (e.g. target='German')."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction preset {task!r}; choose from {sorted(INSTRUCTIONS)}")
    return INSTRUCTIONS[task].format(**fields) if fields else INSTRUCTIONS[task]


def get_template(name: str) -> PromptTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass(frozen=True)
class Text:
    text: str
    user: bool = False  # what a person (or an ASR) wrote: tokenized as plain text, never as control tokens


@dataclass(frozen=True)
class Bos:
    pass


@dataclass(frozen=True)
class Speech:
    turn_index: int  # index into conversation.turns of the speech turn


@dataclass(frozen=True)
class Reply:
    text: str  # an earlier assistant reply; the engine reuses its generated ids when it has them
    turn_index: int = -1


Piece = Union[Text, Bos, Speech, Reply]


def _user_pieces(tpl: PromptTemplate, turn: Turn, index: int, content: str | None, system: str) -> list[Piece]:
    """One user turn. `content` replaces the speech by text (cascade/text engines) when given."""
    prefix = tpl.user_prefix + system
    pieces: list[Piece] = [Bos()] if tpl.bos_per_user_turn else []
    speech = turn.clip is not None and content is None
    body = turn.text if turn.clip is None else content
    if speech:
        instr = turn.text + tpl.instruction_sep if turn.text else ""
        if tpl.join_instruction_to_prefix:
            pieces.append(Text(prefix + instr, user=bool(instr)))
        else:
            pieces += [Text(prefix)] + ([Text(instr, user=True)] if instr else [])
        pieces.append(Speech(index))
    else:
        if turn.clip is not None and turn.text:  # instruction before a transcript
            body = turn.text + (tpl.instruction_sep or " ") + (content or "")
        pieces += [Text(prefix), Text(body or "", user=True)]
    pieces.append(Text(tpl.user_suffix))
    return pieces


def render(tpl: PromptTemplate, conv: Conversation, texts: dict[int, str] | None = None) -> list[Piece]:
    """Conversation -> prompt pieces ending with the opening of the assistant's reply.

    `texts` maps a speech turn's index to text that replaces the speech (a transcript): that is
    how the cascade and text engines share this code.
    """
    texts = texts or {}
    system = conv.system if conv.system is not None else tpl.system_default
    sys_text = tpl.system_format.format(system=system) if system else ""
    pieces: list[Piece] = [Bos()] if tpl.bos_at_start else []
    if sys_text and (tpl.system_repeated or not tpl.system_inline):
        pieces.append(Text(sys_text))
    first_user = True
    for i, turn in enumerate(conv.turns):
        if turn.role == "user":
            inline = sys_text if (tpl.system_inline and first_user) else ""
            pieces += _user_pieces(tpl, turn, i, texts.get(i), inline)
            first_user = False
        else:
            pieces += [Reply(turn.text, i), Text(tpl.assistant_suffix)]
    return [p for p in pieces if not (isinstance(p, Text) and p.text == "")]
