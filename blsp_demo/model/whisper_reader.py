"""Whisper's own decoder as the speech side of a BLSP model (DiVA-style, `speech_compression:
"whisper-decoder"`).

The frozen Whisper decoder reads the encoder states greedily, as the cascade's ASR does, and its
final hidden state at each step (the state whose dot product with Whisper's token table picks the
next token; d = 512) is kept: one vector per Whisper token. A small trained adapter
(`DecoderAdapter`) maps these into the LLM's input-embedding space, where they stand in the
prompt as the speech embeddings (placeholders, as in BLSP). The states are continuous: the LLM
never receives Whisper's hard token choice, only what the decoder knew when it made it.

Off by default: official checkpoints and the ctc-soft micro adapter have no decoder.
"""

from __future__ import annotations

import torch
from torch import nn

SOT, EN, TRANSCRIBE, NO_TIMESTAMPS = 50258, 50259, 50359, 50363  # Whisper's multilingual specials
EOT = 50257
FIRST_SPECIAL = 50258  # every id from here on (languages, tasks, timestamps) is never spoken text
BLANK_SPACE = 220  # " ": suppressed at the first step, as Whisper's own decoding does
PREFIX = (SOT, EN, TRANSCRIBE, NO_TIMESTAMPS)


class DecoderAdapter(nn.Module):
    """Whisper decoder states (.., d_dec) -> LLM input embeddings (.., d_llm): a linear map plus a
    residual bottleneck MLP (starts at zero, so the linear map alone is the initial adapter)."""

    def __init__(self, d_dec: int, d_llm: int, inner_dim: int = 1024):
        super().__init__()
        self.linear = nn.Linear(d_dec, d_llm)
        self.fc1 = nn.Linear(d_dec, inner_dim)
        self.fc2 = nn.Linear(inner_dim, d_llm)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        x = states.to(self.linear.weight.dtype)
        return self.linear(x) + self.fc2(nn.functional.gelu(self.fc1(x)))


def soft_tokens(states: torch.Tensor, whisper_table: torch.Tensor, token_map: torch.Tensor,
                sharpness: float = 1.0) -> torch.Tensor:
    """(.., d_dec) -> (.., d_llm): the LLM embedding of each Whisper token (`token_map`, (V_text, d_llm))
    averaged under Whisper's own distribution at that state (special tokens left out), its logits
    multiplied by `sharpness` first (above 1: closer to Whisper's choice)."""
    logits = states.float() @ whisper_table[: token_map.shape[0]].float().T * sharpness  # (.., V_text)
    probs = logits.softmax(-1)
    probs = probs.masked_fill(probs < 1e-12, 0.0)  # fp32 denormals make the matmul ~40x slower
    return probs @ token_map.float()


def token_spans(pieces: list[str]) -> list[tuple[int, int]]:
    """Character span [lo, hi) of each Whisper token's text in their concatenation."""
    spans, at = [], 0
    for text in pieces:
        spans.append((at, at + len(text)))
        at += len(text)
    return spans


def overlaps(llm_spans: list[tuple[int, int]], whisper_spans: list[tuple[int, int]]) -> list[list[int]]:
    """For each LLM token span, the Whisper positions whose spans it overlaps (in order)."""
    return [[i for i, (a, b) in enumerate(whisper_spans) if a < hi and lo < b] for lo, hi in llm_spans]


def llm_positions(tokens: list[int], states: torch.Tensor, pieces: list[str], llm_tokenize, llm_table: torch.Tensor,
                  whisper_table: torch.Tensor, token_map: torch.Tensor, extra: torch.Tensor | None = None,
                  sharpness: float = 1.0) -> torch.Tensor:
    """Whisper's greedy reading (n tokens, their states (n, d_dec)) re-tokenized by the LLM -> (m, d_llm),
    one vector per LLM token of the transcript (`pieces`: the text of each Whisper token; the transcript is
    their concatenation, stripped, as the cascade passes it). Each vector is that LLM token's own
    embedding plus the mean, over the Whisper positions it overlaps, of how far Whisper's distribution
    moves the expected embedding from its choice (`soft_tokens` minus `token_map` of the chosen token):
    zero where Whisper is sure, so a confident reading is exactly the transcript's embeddings. `extra`
    (n, d_llm), a trained adapter's output per Whisper position, is averaged in the same way."""
    text = "".join(pieces)
    lead = len(text) - len(text.lstrip())
    ids, spans = llm_tokenize(text.strip())  # LLM ids and their character spans in the stripped text
    if not ids:  # nothing read (silence): the soft reading of the one state there is
        soft = soft_tokens(states[:1], whisper_table, token_map, sharpness)  # (1, d_llm)
        return soft if extra is None else soft + extra[:1].float()
    drift = soft_tokens(states, whisper_table, token_map, sharpness) - token_map[torch.tensor(tokens)].float()  # (n, d_llm)
    if extra is not None:
        drift = drift + extra.float()
    hits = overlaps([(lo + lead, hi + lead) for lo, hi in spans], token_spans(pieces))
    base = llm_table[torch.tensor(ids)].float()  # (m, d_llm)
    shift = torch.stack([drift[h].mean(0) if h else torch.zeros_like(base[0]) for h in hits])  # (m, d_llm)
    return base + shift


def whisper_pieces(tokens: list[int]) -> list[str]:
    """The text each Whisper token adds to the transcript (a character split over two tokens goes to the
    second); joined, they are the decoded transcript."""
    import whisper

    enc = whisper.tokenizer.get_tokenizer(True).encoding
    pieces, raw, done = [], b"", ""
    for t in tokens:
        raw += enc.decode_single_token_bytes(t)
        now = raw.decode("utf-8", errors="ignore")
        pieces.append(now[len(done):])
        done = now
    return pieces


def offsets_tokenizer(tokenizer):
    """A fast tokenizer as `llm_tokenize`: text -> (ids, character spans), no special tokens."""
    def tokenize(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(x) for x in enc["offset_mapping"]]

    return tokenize


def _new_cache():
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(), DynamicCache())


@torch.no_grad()
def greedy_states(decoder, encoded: torch.Tensor, max_tokens: int | None = None) -> tuple[list[int], torch.Tensor]:
    """One clip's encoder states (1, T, d) -> Whisper's greedy tokens (n,) and the decoder's final
    hidden state that chose each of them (n, d_dec). English, no timestamps, temperature 0.

    On a trimmed window Whisper may loop ("a b c a b c ..."): decoding stops at a repeated tail
    (`repeated_tail`) and after `max_tokens` (default: 8 tokens a second of audio, plus 8)."""
    if max_tokens is None:
        max_tokens = min(224, encoded.shape[1] * 8 // 50 + 8)  # 50 encoder states a second
    table = decoder.embed_tokens.weight  # (V, d_dec): Whisper's output layer is tied to it
    device = encoded.device
    cache = _new_cache()
    ids = torch.tensor([PREFIX], device=device)
    tokens: list[int] = []
    states: list[torch.Tensor] = []
    for step in range(max_tokens):
        out = decoder(input_ids=ids, encoder_hidden_states=encoded, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        h = out.last_hidden_state[0, -1]  # (d_dec,)
        logits = (h @ table.T).float()  # (V,)
        logits[FIRST_SPECIAL:] = -torch.inf
        if step == 0:
            logits[[BLANK_SPACE, EOT]] = -torch.inf
        tok = int(logits.argmax())
        if tok == EOT:
            break
        tokens.append(tok)
        states.append(h.float())
        cut = repeated_tail(tokens)
        if cut:
            del tokens[-cut:], states[-cut:]
            break
        ids = torch.tensor([[tok]], device=device)
    if not states:  # silence: one state, so every speech turn has at least one vector
        states.append(h.float())
    return tokens, torch.stack(states)


def repeated_tail(tokens: list[int], min_period: int = 3) -> int:
    """How many trailing tokens to drop when the sequence ends in two copies of the same block of
    at least `min_period` tokens (a decoding loop): the second copy's length; else 0."""
    n = len(tokens)
    for p in range(min_period, n // 2 + 1):
        if tokens[n - p:] == tokens[n - 2 * p: n - p]:
            return p
    return 0


def decoder_state_dict(full_state: dict) -> dict:
    """A Hugging Face Whisper state dict -> the `WhisperDecoder` entries."""
    prefix = "model.decoder."
    return {k[len(prefix):]: v.float() for k, v in full_state.items() if k.startswith(prefix)}
