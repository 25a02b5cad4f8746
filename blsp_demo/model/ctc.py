"""CTC frame selection over the LLM's own vocabulary (the micro model's length adapter).

A fixed-rate adapter gives the LLM ~2 speech frames per text token, about half of them carrying
no token at all. Here a CTC head scores every adapter frame against the frozen LLM input-embedding
table by cosine (plus a learned blank); frames read as blank are dropped and runs of frames read
as the same token are averaged. The LLM then receives about one continuous vector per spoken
token, each trained to sit near its token's embedding, much like the token-level alignment of
BLSP-KD (CIF) or CTC compression in other speech LLMs. The vectors stay continuous: the selection
decides only which frames go through, never replaces them by a token's embedding.

Off by default (`speech_compression="none"`): official checkpoints have no such head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CtcSelector(nn.Module):
    """Learned blank direction + logit scale; the token directions are the LLM's embeddings of the
    token ids in `vocab` (a buffer saved with the adapter; empty: the whole embedding table)."""

    def __init__(self, dim: int, vocab_size: int = 0):
        super().__init__()
        self.blank = nn.Parameter(torch.randn(dim) * 0.02)
        self.log_scale = nn.Parameter(torch.tensor(2.5))  # cosines need a sharp softmax (scale ~12)
        self.register_buffer("vocab", torch.zeros(vocab_size, dtype=torch.long))
        self._tables: tuple | None = None  # (key, rows (V', d) fp32, unit rows (V', d)): see `_token_rows`

    def set_vocab(self, token_ids: list[int]) -> None:
        if len(token_ids) != self.vocab.numel():
            raise ValueError(f"the model was built for {self.vocab.numel()} CTC tokens, not {len(token_ids)}")
        self.vocab.copy_(torch.tensor(sorted(token_ids)))

    def token_table(self, table: torch.Tensor) -> torch.Tensor:
        """The LLM embedding table (V, d) -> the rows of this head's classes (V', d)."""
        return table[self.vocab] if self.vocab.numel() else table

    def _token_rows(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's token rows in fp32 (V', d) and the same rows normalized (V', d). The LLM's
        table is frozen, so they are computed once per table and vocabulary (gathering and
        normalizing 13.5k rows cost ~45 ms a speech turn on 2 CPU cores) and recomputed whenever
        the table or the vocabulary changes in place, or gradients could flow into the table
        (a loaded LLM's table keeps `requires_grad` under inference mode, where none can)."""
        if table.requires_grad and torch.is_grad_enabled():
            rows = self.token_table(table).float()
            return rows, F.normalize(rows, dim=-1)
        key = (table.data_ptr(), table._version, tuple(table.shape), table.dtype, table.device,
               self.vocab.data_ptr(), self.vocab._version, torch.is_inference_mode_enabled())
        if self._tables is None or self._tables[0] != key:
            rows = self.token_table(table).float()
            self._tables = (key, rows, F.normalize(rows, dim=-1))
        return self._tables[1], self._tables[2]

    def token_id(self, cls: int) -> int:
        """Class index (1..V') -> LLM token id."""
        return int(self.vocab[cls - 1]) if self.vocab.numel() else cls - 1

    def logits(self, frames: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Frames (B, S, d) against the LLM embedding table (V, d) -> (B, S, 1 + V'); class 0 is
        blank, class i + 1 is the token `token_id(i + 1)`."""
        unit = F.normalize(frames.float(), dim=-1)  # (B, S, d)
        blank = unit @ F.normalize(self.blank.float(), dim=-1)  # (B, S)
        tokens = unit @ self._token_rows(table)[1].T  # (B, S, V')
        return self.log_scale.exp() * torch.cat([blank[..., None], tokens], -1)

    def compress(self, frames: torch.Tensor, lengths: torch.Tensor, table: torch.Tensor,
                 soft: bool = False, sharpness: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, d), (B,) -> (B, S', d), (B,): blanks dropped, runs of one token averaged;
        every row keeps at least one frame (its most token-like one). With `soft`, each kept
        vector becomes the head's expected token embedding (see `soft_embeddings`)."""
        with torch.no_grad():
            scores = self.logits(frames, table)  # (B, S, 1 + V)
            best = scores.argmax(-1)  # (B, S)
        rows = [select_runs(frames[b, : int(n)], best[b, : int(n)], scores[b, : int(n), 1:].amax(-1))
                for b, n in enumerate(lengths)]
        out_len = torch.tensor([r.shape[0] for r in rows], device=lengths.device)
        out = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, S', d)
        return (self.soft_embeddings(out, table, sharpness) if soft else out), out_len

    def soft_embeddings(self, vectors: torch.Tensor, table: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
        """(B, S', d) -> (B, S', d): the mean of the head's token embeddings under its own
        distribution over tokens (blank left out; logits times `sharpness`). The LLM reads points
        inside the hull of its embedding table, continuous and differentiable, never a hard choice."""
        probs = (sharpness * self.logits(vectors, table)[..., 1:]).softmax(-1)  # (B, S', V')
        # Most of the 13.5k probabilities underflow into fp32 denormals, which make the matmul below
        # ~40x slower on x86 CPUs; zeroing those under 1e-12 moves the mean by under 1e-8.
        probs = probs.masked_fill(probs < 1e-12, 0.0)
        return (probs @ self._token_rows(table)[0]).to(vectors.dtype)


def select_runs(frames: torch.Tensor, best: torch.Tensor, token_score: torch.Tensor) -> torch.Tensor:
    """One row: frames (S, d), argmax classes (S,) with 0 = blank, best non-blank score (S,) ->
    (S', d), the mean of each run of equal non-blank classes, in order."""
    keep = best > 0
    if not bool(keep.any()):
        return frames[token_score.argmax()][None]  # (1, d)
    # A run starts where the class changes (blanks in between also split runs: "a _ a" is 2 tokens).
    starts = keep & torch.cat([torch.ones(1, dtype=torch.bool, device=best.device), best[1:] != best[:-1]])
    run_id = torch.cumsum(starts.long(), 0) - 1  # (S,) run index of each frame (valid where keep)
    n_runs = int(starts.sum())
    sums = torch.zeros(n_runs, frames.shape[-1], dtype=frames.dtype, device=frames.device)
    sums = sums.index_add(0, run_id[keep], frames[keep])
    counts = torch.zeros(n_runs, dtype=frames.dtype, device=frames.device).index_add(
        0, run_id[keep], torch.ones(int(keep.sum()), dtype=frames.dtype, device=frames.device))
    return sums / counts[:, None]  # (S', d)


def greedy_classes(best: torch.Tensor) -> list[int]:
    """CTC greedy decoding of one row's argmax classes (S,): repeats merged, blanks (0) dropped."""
    out, prev = [], 0
    for c in best.tolist():
        if c != prev and c != 0:
            out.append(c)
        prev = c
    return out
