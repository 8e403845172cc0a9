"""φ's validation the way LAMA-CKL scores: θ learns held-out documents with φ's weights for a few passes,
then answers their tasks.

The one-step meta-objective L(θ') says how much one inner step on one document helps; the benchmark asks
something else — after several passes of a normal optimiser over many documents, how many of their
objects does θ predict? :func:`ckl_validation` measures that on validation pairs, from θ₀ every time, so
its scores compare across φ updates and pick the φ to keep.

On one process or data parallel under ZeRO-3 (θ a :class:`~taalm_dist.engine.zero3.Zero3ThetaView`), θ learns
through :class:`~taalm_dist.engine.theta.ViewTheta`: each rank takes its share of every batch and of the tasks, the
gradient is the rank-averaged one on each rank's partitions, and AdamW steps the partitions; every rank gets the same
scores (reduced), so all agree on the φ selected.
"""

from __future__ import annotations

from typing import Callable

import torch

from taalm_dist.data import TokenizedPair, collate
from taalm_dist.data.order import shuffled
from taalm_dist.engine.theta import Place, ViewTheta, unmoved
from taalm_dist.losses import next_token_valid_mask, token_weighted_mean
from taalm_dist.meta.functional import ThetaView, eval_mode

WeightsFn = Callable[[dict], torch.Tensor]
"""``fn(doc_batch) -> [B, L]`` token weights (no graph)."""


def ckl_validation(view: ThetaView, items: list[TokenizedPair], weights_fn: WeightsFn, pad_id: int, *, passes: int,
                   lr: float, batch_size: int, seed: int = 0, place: Place = unmoved) -> dict[str, float]:
    """θ (from its current values, restored afterwards) trains ``passes`` passes of AdamW (``lr``, no weight
    decay) over ``items`` in batches of ``batch_size`` with the token-weighted loss under ``weights_fn``'s
    weights; the documents are shuffled per pass by ``seed`` (the same order for every φ). ``place`` moves
    each batch to θ's device. Every rank passes the same ``items`` and runs the same steps.

    Returns ``acc`` (mean object-token accuracy of the items' tasks after the last pass, in [0, 1]),
    ``top_acc`` (the best accuracy over the passes) and ``acc_pass_<k>`` for each pass k.
    """
    saved = view.snapshot()
    batches = []
    for k in range(passes):
        order = shuffled(range(len(items)), seed, k)
        batches.append([order[s : s + batch_size] for s in range(0, len(order), batch_size)])
    weights = {}  # φ is fixed here: each batch's weights once (keyed by the whole batch: every rank hits or misses)
    theta = ViewTheta(view, lr)
    out: dict[str, float] = {}
    try:
        for k, pass_batches in enumerate(batches, start=1):
            with eval_mode(view.model):
                for batch in pass_batches:
                    mine, factor = theta.share([items[i] for i in batch])
                    doc = place(collate(mine, pad_id)[0])
                    key = tuple(batch)
                    if key not in weights:
                        weights[key] = weights_fn(doc).detach()
                    loss = token_weighted_mean(view.loss(doc), weights[key], next_token_valid_mask(doc["attention_mask"]))
                    theta.update(loss * factor)
            was = view.model.training
            out[f"acc_pass_{k}"] = theta.accuracy(items, pad_id, place=place)
            view.model.train(was)
    finally:
        theta.release()
        view.assign(saved)
    out["acc"] = out[f"acc_pass_{passes}"]
    out["top_acc"] = max(out[f"acc_pass_{k}"] for k in range(1, passes + 1))
    return out
