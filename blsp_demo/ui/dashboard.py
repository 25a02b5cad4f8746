"""The Dashboard tab: accept rates (the annotators' consensus and judge verdicts), agreement
between annotators and with the judge (`analysis/agreement.py`), the judge run from the app
(`app/judging.py`), latency, and the Compare votes: win rates with bootstrap intervals and a
Bradley-Terry ranking (`ranking.py`). A private labelling team (`app/identity.py`) sees it after
signing in on the Annotate tab.

Figures are built with `matplotlib.figure.Figure` (not pyplot): no global figure state, safe in
Gradio's worker threads.
"""

from __future__ import annotations

import math

import gradio as gr
import numpy as np
from matplotlib.figure import Figure

from blsp_demo.analysis.labels import SOURCES, accept_rates, agreement
from blsp_demo.app.identity import Roles
from blsp_demo.app.judging import JudgeRunner
from blsp_demo.app.labelling import agreement as team_agreement
from blsp_demo.app.labelling import per_answer, team_frame
from blsp_demo.app.session import ChatState
from blsp_demo.analysis.ranking import PRIOR_TIES, leaderboard
from blsp_demo.analysis.voice_latency import voice_latency_markdown
from blsp_demo.vocab import VERDICTS
from blsp_demo.app.store import votes_frame
from blsp_demo.app.services import Services


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", color="gray")
    ax.set_axis_off()
    return fig


def accept_rate_figure(rates) -> Figure:
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    if rates.empty:
        return _empty(fig, "No labelled answers yet")
    ax = fig.add_subplot()
    groups = sorted({(m, mod) for m, mod in zip(rates["model"], rates["modality"])})
    width = 0.38
    for k, source in enumerate(SOURCES.values()):
        sub = rates[rates["source"] == source].set_index(["model", "modality"])
        xs = [i + (k - 0.5) * width for i in range(len(groups))]
        ys = [sub.loc[g, "rate"] if g in sub.index else 0 for g in groups]
        bars = ax.bar(xs, ys, width, label=source)
        for x, g, bar in zip(xs, groups, bars):
            if g in sub.index:
                ax.text(x, bar.get_height() + 0.02, f"n={int(sub.loc[g, 'n'])}", ha="center", fontsize=8)
    ax.set_xticks(range(len(groups)), [f"{m}\n{mod}" for m, mod in groups], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("accept rate")
    ax.set_title("Accept rate by model x modality")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def agreement_figure(n: int, kappa: float, confusion) -> Figure:
    fig = Figure(figsize=(3.8, 3.4), layout="constrained")
    if n == 0:
        return _empty(fig, "No answer has both a human label\nand a judge verdict yet")
    ax = fig.add_subplot()
    ax.imshow(confusion.values, cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion.values):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks(range(2), [f"judge {v}" for v in VERDICTS])
    ax.set_yticks(range(2), [f"human {v}" for v in VERDICTS])
    ax.set_title(f"Human vs judge: kappa {kappa:.2f} (n={n})" if not math.isnan(kappa) else f"n={n}, kappa undefined", fontsize=9)
    return fig


def latency_figure(frame) -> Figure:
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    if frame.empty:
        return _empty(fig, "No answers logged yet")
    axes = fig.subplots(1, 2)
    groups = sorted({(m, mod) for m, mod in zip(frame["model"], frame["modality"])})
    names = [f"{m}\n{mod}" for m, mod in groups]
    for ax, column, title in ((axes[0], "ttft_s", "Time to first token (s)"), (axes[1], "tokens_per_s", "Tokens/s")):
        data = [frame[(frame["model"] == m) & (frame["modality"] == mod)][column].dropna().astype(float).values
                for m, mod in groups]
        ax.boxplot(data, tick_labels=names)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(title)
    return fig


def summary_markdown(frame, rates, n: int, kappa: float) -> str:
    lines = [f"**{len(frame)}** answers logged, **{int(frame['label'].isin(VERDICTS).sum())}** with a human "
             f"verdict (the annotators' consensus; ties left out), **{int(frame['judge'].isin(VERDICTS).sum())}** "
             "judged."]
    if n:
        shown = "undefined (one verdict only)" if math.isnan(kappa) else f"**{kappa:.2f}**"
        lines.append(f"Human-judge agreement on {n} answers: Cohen's kappa {shown}.")
    if not frame.empty:
        lines.append(f"Median time to first token {frame['ttft_s'].median():.2f} s, median "
                     f"{frame['tokens_per_s'].median():.1f} tokens/s.")
    return "  \n".join(lines)


def with_voice(summary: str, records) -> str:
    """The summary with the voice assistant's end-of-speech latencies (issue 19), when there are any."""
    voice = voice_latency_markdown(records)
    return f"{summary}  \n{voice}" if voice else summary


# ---- Compare votes -------------------------------------------------------------------------
BOARD_NOTE = (
    "Win rate: points per vote (win 1, tie ½, loss 0), with a 95% bootstrap interval over the model's votes. "
    "Rating: Bradley-Terry on the Elo scale (1000 = the geometric mean; +400 = 10:1 odds), fitted with "
    "{prior:g} virtual tie between every pair so that it stays finite with few votes; its interval "
    "resamples all votes. *Both bad* counts as a tie (neither answer was better) and is also counted apart."
)


def comparison_table(board):
    """The leaderboard as shown: intervals as text, rates in %."""
    import pandas as pd

    def span(lo, hi):
        return "" if math.isnan(lo) or math.isnan(hi) else f"[{lo:.0f}, {hi:.0f}]"

    return pd.DataFrame({
        "rank": board["rank"], "model": board["model"], "rating": board["rating"].round(0),
        "rating 95% CI": [span(lo, hi) for lo, hi in zip(board["rating_lo"], board["rating_hi"])],
        "votes": board["games"], "W-T-L": [f"{w}-{t}-{lo}" for w, t, lo in
                                          zip(board["wins"], board["ties"], board["losses"])],
        "both bad": board["both_bad"], "win rate %": board["win_rate"].round(1),
        "win rate 95% CI": [span(lo, hi) for lo, hi in zip(board["win_rate_lo"], board["win_rate_hi"])],
    })


def comparison_figure(board) -> Figure:
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    if board.empty:
        return _empty(fig, "No Compare votes yet: vote in the Compare tab")
    axes = fig.subplots(1, 2)
    names, ys = list(board["model"]), np.arange(len(board))[::-1]  # best on top
    for ax, (col, lo, hi), title in (
            (axes[0], ("win_rate", "win_rate_lo", "win_rate_hi"), "Win rate (%), 95% bootstrap interval"),
            (axes[1], ("rating", "rating_lo", "rating_hi"), "Bradley-Terry rating, 95% interval")):
        value = board[col].to_numpy(float)
        err = np.abs(np.vstack([value - board[lo].to_numpy(float), board[hi].to_numpy(float) - value]))
        ax.errorbar(value, ys, xerr=np.nan_to_num(err), fmt="o", capsize=4)
        ax.set_yticks(ys, names, fontsize=8)
        ax.set_ylim(-0.7, len(board) - 0.3)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].axvline(50, color="gray", lw=0.8, ls="--")
    axes[0].set_xlim(-5, 105)
    axes[1].axvline(1000, color="gray", lw=0.8, ls="--")
    for x, y, n in zip(board["win_rate"], ys, board["games"]):
        axes[0].annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    return fig


def comparison_summary(votes, board) -> str:
    if votes.empty:
        return "**0** Compare votes: the ranking appears once there are votes."
    counts = votes["choice"].value_counts()
    parts = ", ".join(f"{counts.get(c, 0)} {w}" for c, w in
                      (("A", "for A"), ("B", "for B"), ("tie", "ties"), ("both_bad", "both bad")))
    top = board.iloc[0]
    return (f"**{len(votes)}** Compare votes ({parts}) on **{len(board)}** models. Top: **{top['model']}** "
            f"(rating {top['rating']:.0f}, win rate {top['win_rate']:.0f}%).  \n"
            + BOARD_NOTE.format(prior=PRIOR_TIES))


def team_summary(table) -> str:
    """The human-human and human-judge figures over all answers, in words."""
    overall = table[table["scope"] == "all"]
    if overall.empty:
        return "Agreement appears once two annotators (or an annotator and the judge) rated the same answers."
    lines = []
    for row in overall.to_dict("records"):
        value = "undefined" if math.isnan(row["value"]) else f"**{row['value']:.2f}**"
        ci = "" if math.isnan(row["ci_low"]) else f" (95% CI {row['ci_low']:.2f} to {row['ci_high']:.2f})"
        lines.append(f"{row['comparison']}: {row['method']} {value}{ci} on {row['n']} answers; {row['annotators']}.")
    return "  \n".join(lines)


def agreement_view(table):
    """The agreement table as shown: values rounded, intervals as text."""
    import pandas as pd

    def fmt(x):
        return "undefined" if math.isnan(x) else f"{x:.2f}"

    return pd.DataFrame({"scope": table["scope"], "comparison": table["comparison"], "method": table["method"],
                         "annotators": table["annotators"], "n": table["n"], "value": table["value"].map(fmt),
                         "95% CI": [f"[{fmt(lo)}, {fmt(hi)}]" if not math.isnan(lo) else ""
                                    for lo, hi in zip(table["ci_low"], table["ci_high"])]})


class DashboardHandlers:
    def __init__(self, services: Services, roles: Roles | None = None, runner: JudgeRunner | None = None):
        self.store = services.store
        self.roles = roles or Roles.from_env()
        self.runner = runner or JudgeRunner(services.store)

    def admitted(self, state: ChatState | None) -> bool:
        return self.roles.admits((state or ChatState()).annotator)

    def refresh_votes(self, state=None):
        """The Compare section: summary, figure, leaderboard table."""
        if not self.admitted(state):
            return (gr.skip(),) * 3
        votes = votes_frame(self.store.read().records)
        board = leaderboard(zip(votes["model_a"], votes["model_b"], votes["choice"]))
        return comparison_summary(votes, board), comparison_figure(board), comparison_table(board)

    def refresh(self, state=None):
        """Summary, accept-rate, agreement and latency figures, rates table, team agreement
        (summary, table), and whether the page is shown."""
        if not self.admitted(state):
            locked = "This dashboard is private: sign in on the **Annotate** tab first."
            return (locked, *(gr.skip(),) * 6, gr.update(visible=False))
        records = self.store.read().records
        team = team_frame(records)
        frame = per_answer(team)
        rates = accept_rates(frame)
        n, kappa, confusion = agreement(frame)
        table = team_agreement(team)
        return (with_voice(summary_markdown(frame, rates, n, kappa), records), accept_rate_figure(rates),
                agreement_figure(n, kappa, confusion), latency_figure(frame), rates,
                team_summary(table), agreement_view(table), gr.update(visible=True))

    # -- the judge
    def judge_start(self, state):
        if not self.admitted(state):
            raise gr.Error("Sign in on the Annotate tab to run the judge.", print_exception=False)
        state = state or ChatState()
        p = self.runner.start(annotator=state.annotator, session=state.session)
        return p.markdown(), gr.Timer(active=p.running)

    def judge_stop(self, state=None):
        if not self.admitted(state):
            raise gr.Error("Sign in on the Annotate tab to stop the judge.", print_exception=False)
        return self.runner.stop().markdown(), gr.Timer(active=False)

    def judge_tick(self):
        p = self.runner.progress()
        return p.markdown(), gr.Timer(active=p.running)


def build_dashboard_tab(services: Services, tab: gr.Tab, chat_state: gr.State | None = None) -> None:
    h = DashboardHandlers(services)
    chat_state = chat_state if chat_state is not None else gr.State(None)
    refresh = gr.Button("Refresh", variant="primary", elem_id="dash_refresh")
    summary = gr.Markdown(elem_id="dash_summary")
    with gr.Column(visible=not h.roles.private) as body:
        with gr.Row():
            rates_plot = gr.Plot(label="Accept rate", scale=2)
            agreement_plot = gr.Plot(label="Agreement", scale=1)
        gr.Markdown("### Agreement: between annotators, and with the judge")
        team_line = gr.Markdown(elem_id="team_agreement")
        team_table = gr.Dataframe(label="Agreement by scope (95% bootstrap intervals over answers)",
                                  interactive=False, elem_id="agreement_table")
        gr.Markdown("### The LLM judge")
        with gr.Row():
            judge_run = gr.Button("Judge the answers not yet judged", elem_id="judge_run")
            judge_stop = gr.Button("Stop", size="sm", elem_id="judge_stop")
        judge_progress = gr.Markdown(h.runner.progress().markdown(), elem_id="judge_progress")
        timer = gr.Timer(1.0, active=False)
        latency_plot = gr.Plot(label="Latency")
        rates_table = gr.Dataframe(label="Accept rates", interactive=False)
        gr.Markdown("### Compare: which system answers better")
        board_summary = gr.Markdown(elem_id="board_summary")
        board_plot = gr.Plot(label="Win rates and ranking", elem_id="board_plot")
        board_table = gr.Dataframe(label="Ranking (Bradley-Terry)", interactive=False, elem_id="board")
    outputs = [summary, rates_plot, agreement_plot, latency_plot, rates_table, team_line, team_table, body]
    private = dict(api_visibility="private")
    for trigger in (tab.select, refresh.click):
        trigger(h.refresh, [chat_state], outputs, **private)
        trigger(h.refresh_votes, [chat_state], [board_summary, board_plot, board_table], **private)
    judge_run.click(h.judge_start, [chat_state], [judge_progress, timer], **private)
    judge_stop.click(h.judge_stop, [chat_state], [judge_progress, timer], **private)
    timer.tick(h.judge_tick, None, [judge_progress, timer], **private)
