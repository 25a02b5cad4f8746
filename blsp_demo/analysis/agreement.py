"""Agreement between annotators, and between people and the LLM judge, with bootstrap intervals.

Input is a long table, one row per (answer, annotator) label: columns `turn_id`, `annotator`,
`label` (accept | reject), and per answer `model`, `modality`, `judge` (the judge's verdict or None).

- human-human: Cohen's kappa when exactly two annotators labelled answers in common; Krippendorff's
  alpha (nominal; the `krippendorff` package) for more, over every answer with two labels or more.
- human-judge: Cohen's kappa between the people's consensus (the majority label; ties left out) and
  the judge, on the answers that have both; beside it, MT-bench style, the human-human figure.
Each figure has a 95% percentile bootstrap interval over answers (resampled with replacement).
"""

from __future__ import annotations

import math

import numpy as np

from blsp_demo.analysis.metrics import cohen_kappa
from blsp_demo.vocab import ACCEPT, VERDICTS

KAPPA, ALPHA = "Cohen's kappa", "Krippendorff's alpha"
AGREEMENT_COLUMNS = ["scope", "comparison", "method", "annotators", "n", "value", "ci_low", "ci_high"]
N_BOOTSTRAP = 1000


def krippendorff_alpha(matrix: np.ndarray) -> float:
    """Nominal alpha of an (annotators x items) array of 0/1 codes with nan for missing; nan when
    undefined (fewer than two pairable labels, or a single value throughout)."""
    import krippendorff

    pairable = (np.sum(~np.isnan(matrix), axis=0) >= 2).sum()
    values = np.unique(matrix[~np.isnan(matrix)])
    if pairable == 0 or len(values) < 2:
        return math.nan
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal",
                                    value_domain=[0.0, 1.0]))


def label_matrix(long) -> tuple[list[str], list[str], np.ndarray]:
    """(annotators, turn ids, annotators x items array: 1 accept, 0 reject, nan no label)."""
    rows = long[long["label"].isin(VERDICTS)]
    annotators = sorted(rows["annotator"].unique())
    items = list(dict.fromkeys(rows["turn_id"]))
    a_index, i_index = {a: k for k, a in enumerate(annotators)}, {t: k for k, t in enumerate(items)}
    matrix = np.full((len(annotators), len(items)), np.nan)
    for a, t, v in zip(rows["annotator"], rows["turn_id"], rows["label"]):
        matrix[a_index[a], i_index[t]] = 1.0 if v == ACCEPT else 0.0
    return annotators, items, matrix


def _pair_kappa(matrix: np.ndarray) -> float:
    both = ~np.isnan(matrix[0]) & ~np.isnan(matrix[1])
    code = np.array(VERDICTS)[::-1]  # 0 -> reject, 1 -> accept
    return cohen_kappa(list(code[matrix[0, both].astype(int)]), list(code[matrix[1, both].astype(int)]),
                       labels=VERDICTS)


def human_human(matrix: np.ndarray) -> tuple[str, int, float]:
    """(method, n answers with two labels or more, value) for an annotators x items array."""
    pairable = np.sum(~np.isnan(matrix), axis=0) >= 2
    if matrix.shape[0] == 2:
        return KAPPA, int(pairable.sum()), _pair_kappa(matrix)
    return ALPHA, int(pairable.sum()), krippendorff_alpha(matrix)


def bootstrap(stat, n_items: int, n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `stat(item indices)` over resampled items; nan when undefined."""
    if n_items < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n_items, n_items)) for _ in range(n_resamples)])
    values = values[~np.isnan(values)]
    if len(values) < n_resamples / 2:  # mostly undefined: no honest interval
        return math.nan, math.nan
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _human_human_row(long, scope: str, n_resamples: int) -> dict | None:
    annotators, _, matrix = label_matrix(long)
    matrix = matrix[:, np.sum(~np.isnan(matrix), axis=0) >= 2]
    if len(annotators) < 2 or matrix.shape[1] == 0:
        return None
    keep = ~np.all(np.isnan(matrix), axis=1)  # annotators with a label on a shared answer
    matrix, names = matrix[keep], [a for a, k in zip(annotators, keep) if k]
    method, n, value = human_human(matrix)
    lo, hi = bootstrap(lambda idx: human_human(matrix[:, idx])[2], n, n_resamples)
    return {"scope": scope, "comparison": "human-human", "method": method, "annotators": ", ".join(names),
            "n": n, "value": value, "ci_low": lo, "ci_high": hi}


def _human_judge_row(per_answer, scope: str, n_resamples: int) -> dict | None:
    both = per_answer[per_answer["consensus"].isin(VERDICTS) & per_answer["judge"].isin(VERDICTS)]
    if both.empty:
        return None
    human, judge = np.array(both["consensus"]), np.array(both["judge"])
    value = cohen_kappa(list(human), list(judge), labels=VERDICTS)
    lo, hi = bootstrap(lambda idx: cohen_kappa(list(human[idx]), list(judge[idx]), labels=VERDICTS),
                       len(both), n_resamples)
    return {"scope": scope, "comparison": "human-judge", "method": KAPPA, "annotators": "consensus vs judge",
            "n": len(both), "value": value, "ci_low": lo, "ci_high": hi}


def scopes(long):
    """("all", rows), then one scope per model and per modality."""
    yield "all", long
    for column in ("model", "modality"):
        for value, group in long.groupby(column, sort=True):
            yield f"{column}={value}", group


def agreement_table(long, per_answer, n_resamples: int = N_BOOTSTRAP):
    """Human-human and human-judge agreement overall, per model and per modality.
    `long`: one row per (answer, annotator); `per_answer`: one row per answer with `consensus`,
    `judge`, `model`, `modality`."""
    import pandas as pd

    rows = []
    answer_scopes = dict(scopes(per_answer))
    for scope, group in scopes(long):
        for row in (_human_human_row(group, scope, n_resamples),
                    _human_judge_row(answer_scopes.get(scope, per_answer.iloc[:0]), scope, n_resamples)):
            if row is not None:
                rows.append(row)
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
