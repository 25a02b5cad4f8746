"""Human labels and judge verdicts over the answers table (`app.store.answers_frame`): accept
rates by model x modality and source, and agreement between a person and the judge."""

from __future__ import annotations

from blsp_demo.analysis.metrics import cohen_kappa
from blsp_demo.vocab import ACCEPT, VERDICTS

SOURCES = {"label": "human", "judge": "judge"}


def accept_rates(frame):
    """One row per (model, modality, source): n verdicts, n accepted, rate."""
    import pandas as pd

    rows = []
    for column, source in SOURCES.items():
        judged = frame[frame[column].isin(VERDICTS)]
        for (model, modality), group in judged.groupby(["model", "modality"], sort=True):
            accepted = int((group[column] == ACCEPT).sum())
            rows.append({"model": model, "modality": modality, "source": source, "n": len(group),
                         "accepted": accepted, "rate": accepted / len(group)})
    return pd.DataFrame(rows, columns=["model", "modality", "source", "n", "accepted", "rate"])


def agreement(frame):
    """Human vs judge on the answers both rated: (n, kappa, confusion table human x judge)."""
    import pandas as pd

    both = frame[frame["label"].isin(VERDICTS) & frame["judge"].isin(VERDICTS)]
    confusion = pd.crosstab(pd.Categorical(both["label"], VERDICTS), pd.Categorical(both["judge"], VERDICTS),
                            rownames=["human"], colnames=["judge"], dropna=False)
    return len(both), cohen_kappa(list(both["label"]), list(both["judge"])), confusion
