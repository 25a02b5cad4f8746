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


def soft_tokens(states: torch.Tensor, whisper_table: torch.Tensor, token_map: torch.Tensor) -> torch.Tensor:
    """(.., d_dec) -> (.., d_llm): the LLM embedding of each Whisper token (`token_map`, (V_text, d_llm))
    averaged under Whisper's own distribution at that state (special tokens left out)."""
    logits = states.float() @ whisper_table[: token_map.shape[0]].float().T  # (.., V_text)
    probs = logits.softmax(-1)
    probs = probs.masked_fill(probs < 1e-12, 0.0)  # fp32 denormals make the matmul ~40x slower
    return probs @ token_map.float()


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
