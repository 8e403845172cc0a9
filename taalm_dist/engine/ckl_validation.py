"""φ's validation the way LAMA-CKL scores: θ learns held-out documents with φ's weights for a few passes,
then answers their tasks.

The one-step meta-objective L(θ') says how much one inner step on one document helps; the benchmark asks
something else — after several passes of a normal optimiser over many documents, how many of their
objects does θ predict? :func:`ckl_validation` measures that on validation pairs, from θ₀ every time, so
its scores compare across φ updates and pick the φ to keep.

On one process or data parallel under ZeRO-3 (θ a :class:`~taalm_dist.engine.zero3.Zero3ThetaView`): each rank
takes its share of every batch and of the tasks, the gradient is the rank-averaged one on each rank's partitions,
and AdamW steps the partitions; every rank gets the same scores (reduced), so all agree on the φ selected.
"""

from __future__ import annotations

import random
from typing import Callable

import torch

from taalm_dist.ckl.metrics import object_token_accuracy
from taalm_dist.data import TokenizedPair, collate, pad_batch
from taalm_dist.engine import distributed as D
from taalm_dist.losses import next_token_valid_mask, token_weighted_mean
from taalm_dist.meta.functional import ThetaView, eval_mode

WeightsFn = Callable[[dict], torch.Tensor]
"""``fn(doc_batch) -> [B, L]`` token weights (no graph)."""
Place = Callable[[dict], dict]
"""``fn(batch) -> batch`` on the model's device (:meth:`taalm_dist.engine.runtime.Runtime.to_device`)."""


def _unmoved(batch: dict) -> dict:
    return batch


@torch.no_grad()
def task_accuracy(model: torch.nn.Module, items: list[TokenizedPair], pad_id: int, batch_size: int = 16,
                  place: Place = _unmoved) -> float:
    """Mean object-token accuracy (teacher forced) of the tasks of ``items`` under ``model``, in [0, 1]; ``place``
    moves each batch to the model's device.

    With several ranks each scores every world-th item and the sums are reduced; every rank runs the same number
    of forwards (ZeRO-3 gathers θ's partitions in each), a rank with fewer items a repeated one it does not count."""
    rank, world = D.rank(), D.world_size()
    mine = items[rank::world]
    steps = -(-len(mine) // batch_size)
    if world > 1:
        steps = int(D.all_reduce_max([float(steps)])[0])
    total = 0.0
    for k in range(steps):
        chunk = mine[k * batch_size : (k + 1) * batch_size]
        batch_items = chunk or items[:1]
        batch = place(pad_batch([t.task_ids for t in batch_items], pad_id,
                                {"label_mask": [t.label_mask for t in batch_items]}))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if chunk:
            total += float(object_token_accuracy(logits, batch["input_ids"], batch["attention_mask"],
                                                 batch["label_mask"]).sum())
    if world > 1:
        total = D.all_reduce_sum([total])[0]
    return total / max(1, len(items))


def rank_share(items: list, rank: int, world: int) -> tuple[list, float]:
    """This rank's part of a batch and the factor on its mean loss that makes the rank-averaged gradient the
    batch's mean: ``(items, n_r·world/N)``. [uneven batch note] Rank r holds n_r = ceil(N/world) consecutive
    documents (the last ranks fewer); a rank with none gets the batch's first document with factor 0, so every
    rank still runs the same forwards and backwards."""
    local = -(-len(items) // world)
    mine = items[rank * local : (rank + 1) * local]
    return (mine, len(mine) * world / len(items)) if mine else (items[:1], 0.0)


def ckl_validation(view: ThetaView, items: list[TokenizedPair], weights_fn: WeightsFn, pad_id: int, *, passes: int,
                   lr: float, batch_size: int, seed: int = 0, place: Place = _unmoved) -> dict[str, float]:
    """θ (from its current values, restored afterwards) trains ``passes`` passes of AdamW (``lr``, no weight
    decay) over ``items`` in batches of ``batch_size`` with the token-weighted loss under ``weights_fn``'s
    weights; the documents are shuffled per pass by ``seed`` (the same order for every φ). ``place`` moves
    each batch to θ's device. Every rank passes the same ``items`` and runs the same steps.

    Returns ``acc`` (mean object-token accuracy of the items' tasks after the last pass, in [0, 1]),
    ``top_acc`` (the best accuracy over the passes) and ``acc_pass_<k>`` for each pass k.
    """
    rank, world = D.rank(), D.world_size()
    saved = view.snapshot()
    batches = []
    for k in range(passes):
        order = list(range(len(items)))
        random.Random(seed * 1000 + k).shuffle(order)
        batches.append([order[s : s + batch_size] for s in range(0, len(order), batch_size)])
    weights = {}  # φ is fixed here: each batch's weights once (keyed by the whole batch: every rank hits or misses)
    opt = torch.optim.AdamW(view.params, lr=lr, weight_decay=0.0)
    out: dict[str, float] = {}
    try:
        for k, pass_batches in enumerate(batches, start=1):
            with eval_mode(view.model):
                for batch in pass_batches:
                    mine, factor = rank_share([items[i] for i in batch], rank, world)
                    doc = place(collate(mine, pad_id)[0])
                    key = tuple(batch)
                    if key not in weights:
                        weights[key] = weights_fn(doc).detach()
                    loss = token_weighted_mean(view.loss(doc), weights[key], next_token_valid_mask(doc["attention_mask"]))
                    for p, g in zip(view.params, view.grad(loss * factor)):
                        p.grad = g
                    opt.step()
                    view.sync()
            was = view.model.training
            view.model.eval()
            out[f"acc_pass_{k}"] = task_accuracy(view.model, items, pad_id, place=place)
            view.model.train(was)
    finally:
        for p in view.params:
            p.grad = None
        view.assign(saved)
    out["acc"] = out[f"acc_pass_{passes}"]
    out["top_acc"] = max(out[f"acc_pass_{k}"] for k in range(1, passes + 1))
    return out
