"""Pairwise votes -> win rates with bootstrap intervals, and a Bradley-Terry ranking.

A vote on a round between systems `a` (shown as A) and `b` (shown as B) is one of `A`, `B`, `tie`
or `both_bad`. As an outcome it gives `a` 1 point (A won), 0 (B won) or 1/2 (a tie), and `b` the
rest. "Both bad" says neither answer was better than the other, which is what a tie says about the
pair, so by default it counts as a tie (as in Chatbot Arena); `both_bad="exclude"` drops those
votes instead. The leaderboard reports the both-bad count of every model apart either way.

Bradley-Terry: P(i beats j) = p_i / (p_i + p_j). The maximum-likelihood strengths, with a tie
counted as half a win for each side, solve W_i = sum_j N_ij p_i / (p_i + p_j) (W_i: points of i,
N_ij: games of i and j); `bradley_terry` finds them with the MM iteration of Hunter (2004).
For two models this is p_1 / (p_1 + p_2) = W_1 / N_12, the plain win rate. The MLE does not exist
when a model never lost (or never won); `prior` virtual ties between every pair keep it finite and
pull small samples toward "all equal".

    >>> board = leaderboard([("x", "y", "A"), ("x", "y", "A"), ("x", "y", "B")], prior=0)
    >>> round(float(board.loc[0, "win_rate"]), 1), board.loc[0, "model"]
    (66.7, 'x')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from blsp_demo.analysis.metrics import bootstrap_interval
from blsp_demo.vocab import VOTE_CHOICES

CHOICES = VOTE_CHOICES
POINTS = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_bad": 0.5}  # points of the system shown as A
PRIOR_TIES = 1.0  # virtual ties between every pair of models in the leaderboard's Bradley-Terry fit
BT_RESAMPLES = 200  # bootstrap refits of Bradley-Terry (each a few ms for a handful of models)
ELO_SCALE = 400 / math.log(10)  # rating = 1000 + ELO_SCALE * ln(p): 400 points = 10:1 odds
LEADERBOARD_COLUMNS = ["rank", "model", "rating", "rating_lo", "rating_hi", "games", "wins", "ties", "losses",
                       "both_bad", "win_rate", "win_rate_lo", "win_rate_hi"]


@dataclass(frozen=True)
class Outcome:
    a: str
    b: str
    points_a: float  # 1, 1/2 or 0; b gets 1 - points_a
    both_bad: bool = False


def outcomes(votes: Iterable[tuple[str, str, str]], both_bad: str = "tie") -> list[Outcome]:
    """(model_a, model_b, choice) triples -> outcomes; `both_bad` is "tie" or "exclude"."""
    if both_bad not in ("tie", "exclude"):
        raise ValueError(f'both_bad must be "tie" or "exclude"; got {both_bad!r}')
    out = []
    for a, b, choice in votes:
        if choice not in POINTS:
            raise ValueError(f"a vote is one of {CHOICES}; got {choice!r}")
        if a == b:
            raise ValueError(f"a vote compares two different models; got {a!r} twice")
        if choice == "both_bad" and both_bad == "exclude":
            continue
        out.append(Outcome(a, b, POINTS[choice], choice == "both_bad"))
    return out


def models_of(results: Sequence[Outcome]) -> list[str]:
    return sorted({o.a for o in results} | {o.b for o in results})


def win_matrix(results: Sequence[Outcome], models: Sequence[str]) -> np.ndarray:
    """(K, K) points: W[i, j] is what model i scored against model j (a tie adds 1/2 to both)."""
    index = {m: i for i, m in enumerate(models)}
    wins = np.zeros((len(models), len(models)))
    for o in results:
        i, j = index[o.a], index[o.b]
        wins[i, j] += o.points_a
        wins[j, i] += 1 - o.points_a
    return wins


def bradley_terry(wins: np.ndarray, prior: float = 0.0, tol: float = 1e-10, max_iter: int = 100_000) -> np.ndarray:
    """Bradley-Terry strengths from a (K, K) win matrix, scaled to a geometric mean of 1.

    MM iteration (Hunter 2004): p_i <- W_i / sum_j N_ij / (p_i + p_j), with N = W + W^T.
    `prior` adds that many virtual ties to every pair (prior / 2 points each way). Without it, a
    model that never won gets strength 0 (and one that never lost takes all the mass)."""
    wins = np.asarray(wins, dtype=np.float64) + prior / 2 * (1 - np.eye(len(wins)))
    games = wins + wins.T  # (K, K)
    scored = wins.sum(axis=1)  # (K,)
    p = np.ones(len(wins))
    for _ in range(max_iter):
        pair_sums = p[:, None] + p[None, :]
        denom = (games / np.where(pair_sums > 0, pair_sums, 1)).sum(axis=1)
        new = np.where(denom > 0, scored / np.where(denom > 0, denom, 1), 0.0)
        new = _geometric_normalize(new)
        done = np.max(np.abs(new - p) / np.maximum(new, 1e-300)) < tol
        p = new
        if done:
            break
    return p


def _geometric_normalize(p: np.ndarray) -> np.ndarray:
    alive = p > 0
    if not alive.any():
        return p
    return p / math.exp(np.log(p[alive]).mean())


def ratings(strengths: np.ndarray) -> np.ndarray:
    """Elo-like ratings: 1000 at the geometric mean, +400 for every 10x in strength."""
    with np.errstate(divide="ignore"):
        return 1000 + ELO_SCALE * np.log(strengths)


def win_rate_interval(points: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """(win rate, lo, hi) in percent: mean points per game, 95% percentile bootstrap over games."""
    stats = np.array([(p, 1.0) for p in points], dtype=np.float64).reshape(-1, 2)
    if len(stats) == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = bootstrap_interval("win_rate", stats, seed=seed)
    return (100 * stats[:, 0].mean(), lo, hi)


def rating_intervals(results: Sequence[Outcome], models: Sequence[str], prior: float,
                     n_resamples: int = BT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(K, 2) 95% percentile-bootstrap intervals of the ratings: votes resampled, model refitted."""
    if not results or n_resamples <= 0:
        return np.full((len(models), 2), math.nan)
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(n_resamples):
        sample = [results[i] for i in rng.integers(0, len(results), size=len(results))]
        fits.append(ratings(bradley_terry(win_matrix(sample, models), prior)))
    fits = np.array(fits)  # (n_resamples, K); without a prior some are -inf: pick, never interpolate
    return np.stack([np.percentile(fits, 2.5, axis=0, method="lower"),
                     np.percentile(fits, 97.5, axis=0, method="higher")], axis=1)


def leaderboard(votes: Iterable[tuple[str, str, str]], both_bad: str = "tie", prior: float = PRIOR_TIES,
                n_resamples: int = BT_RESAMPLES, seed: int = 0):
    """One row per model, best first: Bradley-Terry rating with its bootstrap interval, games,
    wins/ties/losses (both-bad votes counted as ties unless excluded), the both-bad count, and the
    win rate (points per game, %) with its bootstrap interval."""
    import pandas as pd

    votes = list(votes)
    results = outcomes(votes, both_bad)
    models = models_of(outcomes(votes))  # a model whose only votes were "both bad" still gets a row
    if not models:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    rating = ratings(bradley_terry(win_matrix(results, models), prior))
    bounds = rating_intervals(results, models, prior, n_resamples, seed)
    rows = []
    for k, model in enumerate(models):
        points = [o.points_a if o.a == model else 1 - o.points_a for o in results if model in (o.a, o.b)]
        rate, lo, hi = win_rate_interval(points, seed)
        rows.append({"model": model, "rating": rating[k], "rating_lo": bounds[k, 0], "rating_hi": bounds[k, 1],
                     "games": len(points), "wins": points.count(1.0), "ties": points.count(0.5),
                     "losses": points.count(0.0),
                     "both_bad": sum(1 for a, b, c in votes if c == "both_bad" and model in (a, b)),
                     "win_rate": rate, "win_rate_lo": lo, "win_rate_hi": hi})
    frame = pd.DataFrame(rows).sort_values(["rating", "model"], ascending=[False, True]).reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame[LEADERBOARD_COLUMNS]
