"""Beams and batches for a runtime without transformers' `generate` (llama.cpp): each row or beam
decodes over a cache of its own, from scratch (no conversation cache, as `generate` does), with the
same `pick_next` as streaming. Beam search keeps the `num_beams` best partial answers by summed
log-probability and ends when every kept beam has stopped, or at `max_new_tokens`; finished answers
are ranked by their log-probability over their length (transformers' `length_penalty=1.0`)."""

from __future__ import annotations

import torch

from blsp_demo.engine.decoding import make_rng, pick_next
from blsp_demo.options import GenerationOptions


def decode_rows(runtime, plans, options: GenerationOptions, stop_ids: list[int]) -> list[list[int]]:
    """Greedy or sampled answers of independent prompts. Each row is prefilled over a cache of its
    own; then, when the runtime can (`forward_many`), every unfinished row's next token goes through
    the LLM in one call, in groups of at most `runtime.max_rows`; otherwise row after row."""
    rng = make_rng(options, runtime.device)
    if getattr(runtime, "forward_many", None) is None:
        return [_decode_group(runtime, [plan], options, stop_ids, rng, together=False)[0] for plan in plans]
    size = max(1, getattr(runtime, "max_rows", len(plans)))
    return [ids for lo in range(0, len(plans), size)
            for ids in _decode_group(runtime, plans[lo:lo + size], options, stop_ids, rng, together=True)]


def _decode_group(runtime, plans, options: GenerationOptions, stop_ids: list[int], rng, together: bool) -> list[list[int]]:
    pasts = [runtime.new_cache() for _ in plans]
    logits = torch.cat([runtime.forward(p.ids, p.frames_from(0), past, 0) for p, past in zip(plans, pasts)])  # (B, V)
    out: list[list[int]] = [[] for _ in plans]
    live = list(range(len(plans)))  # rows still decoding; logits row k belongs to live[k]
    while live and options.max_new_tokens > 0:
        toks = pick_next(logits, options, [out[r] for r in live], len(out[live[0]]), stop_ids, rng).tolist()
        going = []
        for r, tok in zip(live, toks):
            if tok in stop_ids:
                continue
            out[r].append(tok)
            if len(out[r]) < options.max_new_tokens:
                going.append((r, tok))
        live = [r for r, _ in going]
        if not live:
            break
        if together:
            logits = runtime.forward_many([t for _, t in going], [pasts[r] for r in live])  # (B_live, V)
        else:
            logits = torch.cat([runtime.forward([t], None, pasts[r], len(plans[r].ids) + len(out[r]) - 1)
                                for r, t in going])
    return out


def _step_scores(logits: torch.Tensor, options: GenerationOptions, ids: list[int], stop_ids: list[int]) -> torch.Tensor:
    """(V,) log-probabilities of the next token, with the repetition penalty and min length applied."""
    logits = logits.float().clone()[0]
    if options.repetition_penalty != 1.0 and ids:
        idx = torch.tensor(sorted(set(ids)))
        vals = logits[idx]
        logits[idx] = torch.where(vals > 0, vals / options.repetition_penalty, vals * options.repetition_penalty)
    if len(ids) < options.min_new_tokens and stop_ids:
        logits[stop_ids] = float("-inf")
    return torch.log_softmax(logits, -1)


def beam_search(runtime, plan, options: GenerationOptions, stop_ids: list[int]) -> list[int]:
    """The best answer of a beam search of `options.num_beams` beams (greedy scores, no sampling)."""
    width = options.num_beams
    root = runtime.new_cache()
    first = runtime.forward(plan.ids, plan.frames_from(0), root, 0)
    beams = [(0.0, [], root, first)]  # (summed log-prob, ids, cache, last logits)
    done: list[tuple[float, list[int]]] = []
    while beams:
        grown = []
        for score, ids, past, logits in beams:
            lp = _step_scores(logits, options, ids, stop_ids)
            top = torch.topk(lp, width)
            grown += [(score + float(v), ids, past, int(t)) for v, t in zip(top.values, top.indices)]
        grown.sort(key=lambda x: -x[0])
        beams = []
        for score, ids, past, tok in grown:
            if len(beams) == width:
                break
            if tok in stop_ids or len(ids) + 1 >= options.max_new_tokens:
                done.append((score / (len(ids) + 1), ids if tok in stop_ids else ids + [tok]))
                continue
            child = runtime.copy_prefix(past, len(plan.ids) + len(ids))
            logits = runtime.forward([tok], None, child, len(plan.ids) + len(ids))
            beams.append((score, ids + [tok], child, logits))
        if len(done) >= width and (not beams or max(d[0] for d in done) >= beams[0][0] / max(1, len(beams[0][1]))):
            break
    return max(done, key=lambda d: d[0])[1] if done else []
