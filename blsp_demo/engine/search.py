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
    """Greedy or sampled answers of independent prompts, one after the other."""
    rng = make_rng(options, runtime.device)
    out = []
    for plan in plans:
        past = runtime.new_cache()
        logits = runtime.forward(plan.ids, plan.frames_from(0), past, 0)
        ids: list[int] = []
        while len(ids) < options.max_new_tokens:
            tok = int(pick_next(logits, options, [ids], len(ids), stop_ids, rng)[0])
            if tok in stop_ids:
                break
            ids.append(tok)
            if len(ids) < options.max_new_tokens:
                logits = runtime.forward([tok], None, past, len(plan.ids) + len(ids) - 1)
        out.append(ids)
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
