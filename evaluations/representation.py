"""How alike does the LLM see speech and its transcript? (paper section 2, appendix D)

    python -m evaluations.representation --manifest F --model SPEC --out DIR [--n 50]

For each item (audio + transcript) and each of four instructions (continuation, sentiment,
repeat, translate), the final-layer hidden state of the last prompt token is taken twice: with the
speech (adapter output) in the prompt, and with the transcript in its place. Reported:

- raw cosine of speech vs transcript states, as the paper does. Under a chat template it is
  high for any two inputs (two unrelated transcripts already give ~0.94), so also:
- centered cosine: the mean state over all items and both modalities (per instruction) is
  subtracted first, so what is shared by every prompt no longer counts;
- retrieval accuracy: does each speech state pick its own transcript's state, by centered cosine,
  among the N items (chance 1/N)?
- the instruction-vs-instruction matrix: mean centered cosine of speech under instruction a with
  the same item's transcript under instruction b (a BLSP-aligned model keeps the diagonal high);
- a 2-D picture like the paper's Figures 1 and 3: t-SNE (scikit-learn, as the paper) beside a PCA
  projection (linear, so distances are comparable across runs), coloured by instruction, marked
  by modality.

Needs a BLSP engine (`load_engine(SPEC, "blsp")`): it uses `engine.plan` and the LLM's forward
with `output_hidden_states`. `--fresh-adapter` measures the micro layout with an untrained adapter
instead: the numbers a model shows with no alignment at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from blsp_demo.conversation import Conversation, Turn
from blsp_demo.prompts import instruction_text

INSTRUCTIONS = {
    "continuation": instruction_text("continue"),
    "sentiment": instruction_text("sentiment"),
    "repeat": instruction_text("repeat"),
    "translate": instruction_text("translate", target="German"),
}


# ---- pure functions over states (N, d) ------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for each row i."""
    return np.sum(_unit(a) * _unit(b), axis=-1)


def center(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets minus the mean of all their rows together (one mean: a modality gap still shows)."""
    mean = np.concatenate([a, b]).mean(axis=0, keepdims=True)
    return a - mean, b - mean


def retrieval_accuracy(queries: np.ndarray, keys: np.ndarray) -> float:
    """Fraction of rows i whose most cosine-similar key is key i."""
    sims = _unit(queries) @ _unit(keys).T  # (N, N)
    return float(np.mean(np.argmax(sims, axis=1) == np.arange(len(queries))))


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of x."""
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def analyse(speech: dict[str, np.ndarray], text: dict[str, np.ndarray]) -> dict:
    """speech[instr], text[instr]: (N, d) states of the same N items. Returns the report."""
    names = list(speech)
    per = {}
    for name in names:
        cs, ct = center(speech[name], text[name])
        per[name] = {"raw_cosine": float(paired_cosine(speech[name], text[name]).mean()),
                     "centered_cosine": float(paired_cosine(cs, ct).mean()),
                     "retrieval_accuracy": retrieval_accuracy(cs, ct),
                     "text_text_raw_cosine": _mean_offdiag(text[name])}
    matrix = [[float(paired_cosine(*center(speech[a], text[b])).mean()) for b in names] for a in names]
    raw = [[float(paired_cosine(speech[a], text[b]).mean()) for b in names] for a in names]
    n = len(next(iter(speech.values())))
    return {"items": n, "chance_retrieval": 1.0 / n if n else float("nan"), "instructions": per,
            "instruction_matrix": {"rows_speech": names, "cols_text": names, "centered": matrix, "raw": raw}}


def _mean_offdiag(x: np.ndarray) -> float:
    """Mean raw cosine between different items of one modality: the floor a raw cosine sits on."""
    sims = _unit(x) @ _unit(x).T
    n = len(x)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1))) if n > 1 else float("nan")


# ---- states from an engine ------------------------------------------------------------------------
def transcript_turn(engine, instruction: str, transcript: str) -> Turn:
    """The transcript where the speech was, joined to the instruction as the text engine does."""
    sep = engine.template.instruction_sep or " "
    return Turn("user", text=f"{instruction}{sep}{transcript}" if instruction else transcript)


def last_prompt_state(engine, conv: Conversation) -> np.ndarray:
    """Final-layer hidden state at the last prompt position: (d_llm,)."""
    import torch

    from blsp_demo.engine.cache import ChatCache

    plan = engine.plan(conv, ChatCache())
    with torch.inference_mode():
        ids = torch.tensor([plan.ids], device=engine.device)
        embeds = engine.embed(ids, plan.frames_from(0))  # (1, L, d_llm)
        out = engine.llm(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return out.hidden_states[-1][0, -1].float().cpu().numpy()


def collect_states(engine, items: list[dict], instructions: dict[str, str] = INSTRUCTIONS, progress=None):
    speech = {k: [] for k in instructions}
    text = {k: [] for k in instructions}
    for item in items:
        for name, instr in instructions.items():
            speech[name].append(last_prompt_state(engine, Conversation().add_speech(item["audio"], instr)))
            text[name].append(last_prompt_state(engine, Conversation((transcript_turn(engine, instr, item["transcript"]),))))
        if progress is not None:
            progress.update()
    return ({k: np.stack(v) for k, v in speech.items()}, {k: np.stack(v) for k, v in text.items()})


# ---- outputs ------------------------------------------------------------------------------------------
def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of the rows of x (cosine distances, perplexity capped for small sets), seeded."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity,
                random_state=seed).fit_transform(x.astype(np.float64))


def plot(speech: dict[str, np.ndarray], text: dict[str, np.ndarray], path: Path, title: str) -> None:
    """t-SNE (left, as the paper's Figures 1 and 3) and PCA (right) of every state."""
    from matplotlib.figure import Figure

    names = list(speech)
    allx = np.concatenate([np.concatenate([speech[k], text[k]]) for k in names])  # (2 x items x instructions, d)
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    for col, (label, xy) in enumerate((("t-SNE", tsne_2d(allx)), ("PCA", pca_2d(allx)))):
        ax = fig.add_subplot(1, 2, col + 1)
        start = 0
        for i, name in enumerate(names):
            n = len(speech[name])
            color = f"C{i}"
            ax.scatter(*xy[start:start + n].T, c=color, marker="o", s=18, label=f"{name} / speech")
            ax.scatter(*xy[start + n:start + 2 * n].T, c=color, marker="x", s=18, label=f"{name} / text")
            start += 2 * n
        ax.set_title(f"{title} ({label})", fontsize=10)
        ax.set_xlabel(f"{label} 1")
        ax.set_ylabel(f"{label} 2")
        ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120)


def markdown(report: dict, model: str) -> str:
    names = report["instruction_matrix"]["rows_speech"]
    lines = [f"# Speech vs transcript: last prompt token, final layer ({model})", "",
             f"{report['items']} items; retrieval chance {100 * report['chance_retrieval']:.1f}%.", "",
             "| instruction | raw cosine | raw cosine, two different transcripts | centered cosine | retrieval acc (%) |",
             "|---|---|---|---|---|"]
    for name, r in report["instructions"].items():
        lines.append(f"| {name} | {r['raw_cosine']:.3f} | {r['text_text_raw_cosine']:.3f} | {r['centered_cosine']:.3f} | "
                     f"{100 * r['retrieval_accuracy']:.1f} |")
    lines += ["", "Centered cosine, speech under the row's instruction vs transcript under the column's:", "",
              "| speech \\ text | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, report["instruction_matrix"]["centered"]):
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
    lines += ["", "The picture (`representation.png`): t-SNE (left, as the paper) and PCA (right) of every state; "
              "o = speech, x = transcript, one colour per instruction.", ""]
    return "\n".join(lines)


def fresh_micro_engine():
    """Bundled Whisper base + SmolLM2 with a freshly initialised adapter (seed 0)."""
    import torch

    from blsp_demo.weights.devices import placement
    from blsp_demo.engine.loading import build_engine
    from blsp_demo.weights.checkpoints import assemble_micro, micro_config

    torch.manual_seed(0)
    place = placement()
    model, tok, extractor = assemble_micro(micro_config(), place)
    return build_engine("micro-fresh-adapter", "blsp", place, blsp=model, tokenizer=tok, extractor=extractor,
                        template="chatml")


def main(argv: list[str] | None = None) -> None:
    from tqdm import tqdm

    from blsp_demo.weights.devices import set_threads
    from blsp_demo.engine.loading import load_engine

    p = argparse.ArgumentParser(prog="python -m evaluations.representation", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, required=True, help="JSONL with audio and transcript")
    p.add_argument("--model", default="micro-blsp")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=50, help="items (the retrieval pool size)")
    p.add_argument("--fresh-adapter", action="store_true",
                   help="baseline: the micro layout with an untrained adapter (what the numbers are without alignment)")
    a = p.parse_args(argv)
    set_threads()
    rows = [json.loads(x) for x in a.manifest.read_text(encoding="utf-8").splitlines() if x.strip()]
    items = [dict(r, audio=str((a.manifest.parent / r["audio"]).resolve())) for r in rows
             if r.get("audio") and (r.get("transcript") or r.get("reference"))][:a.n]
    for item in items:
        item.setdefault("transcript", item.get("reference"))
    engine = fresh_micro_engine() if a.fresh_adapter else load_engine(a.model, "blsp")
    label = "micro layout, untrained adapter" if a.fresh_adapter else a.model
    with tqdm(total=len(items), desc="states", unit="item") as bar:
        speech, text = collect_states(engine, items, progress=bar)
    report = analyse(speech, text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "representation.json").write_text(json.dumps(report, indent=1))
    command = (f"python -m evaluations.representation --manifest {a.manifest} --n {a.n} --out {a.out} "
               + ("--fresh-adapter" if a.fresh_adapter else f"--model {a.model}"))
    (a.out / "representation.md").write_text(markdown(report, label) + f"\nMade with:\n\n```\n{command}\n```\n")
    plot(speech, text, a.out / "representation.png", f"{label}: last prompt token")
    print(markdown(report, label))


if __name__ == "__main__":
    main()
