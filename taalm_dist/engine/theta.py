"""θ as a learner: one interface, three implementations, for every program that trains θ with AdamW.

* :class:`LocalTheta` — one process: the module and a torch AdamW.
* :class:`Zero3Theta` — several processes: a DeepSpeed ZeRO-3 engine (AdamW of its config), data parallel over each
  batch.
* :class:`ViewTheta` — the meta-trainer's θ view (:class:`~taalm_dist.meta.functional.ThetaView` or its ZeRO-3 form),
  trained for a while by φ's CKL validation and restored afterwards by the caller.

Each gives the same five things: :meth:`share` (this rank's part of a batch and its loss factor), :meth:`update`
(one AdamW step on a loss), :meth:`accuracy` / :meth:`nll_and_accuracy` (object-token scores of tasks, split over ranks), :meth:`save` /
:meth:`load` (θ's trainable state and its optimizer, in a checkpoint directory) and :meth:`trainable_state` (θ's
trainable tensors in full, for export). ``ckl run``, ``taalm learn`` and φ's CKL validation learn through it, so a
θ update is one piece of code whatever the process count.

[uneven batch note] Under data parallelism each rank takes a share of every batch (:func:`rank_share`) and
multiplies its mean loss by n_r·world/N, so that the engine's rank average of the gradients is the mean over the
whole batch even when N does not divide evenly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from taalm_dist.data import TokenizedPair, pad_batch
from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine import distributed as D
from taalm_dist.engine.run_dir import load_on_every_rank
from taalm_dist.errors import ConfigError
from taalm_dist.losses.accuracy import object_token_accuracy, object_token_nll
from taalm_dist.models.lora import trainable_parameters

Place = Callable[[dict], dict]
"""``fn(batch) -> batch`` on the model's device (:meth:`taalm_dist.engine.runtime.Runtime.to_device`)."""


def unmoved(batch: dict) -> dict:
    """The default ``place``: ``batch`` as it is (already on the model's device)."""
    return batch


@torch.no_grad()
def task_scores(model: nn.Module, items: list[TokenizedPair], pad_id: int, batch_size: int = 16,
                place: Place = unmoved, scores: tuple = (object_token_accuracy,)) -> list[float]:
    """For each of ``scores`` (``fn(logits, input_ids, attention_mask, label_mask) -> [B]``, teacher forced; all from
    the same forwards), its mean over the tasks of ``items`` under ``model``; ``place`` moves each batch to the
    model's device.

    With several ranks each scores every world-th item and the sums are reduced; every rank runs the same number
    of forwards (ZeRO-3 gathers θ's partitions in each), a rank with fewer items a repeated one it does not count."""
    rank, world = D.rank(), D.world_size()
    mine = items[rank::world]
    steps = -(-len(mine) // batch_size)
    if world > 1:
        steps = int(D.all_reduce_max([float(steps)])[0])
    total = [0.0] * len(scores)
    for k in range(steps):
        chunk = mine[k * batch_size : (k + 1) * batch_size]
        batch_items = chunk or items[:1]
        batch = place(pad_batch([t.task_ids for t in batch_items], pad_id,
                                {"label_mask": [t.label_mask for t in batch_items]}))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if chunk:
            for i, score in enumerate(scores):
                total[i] += float(score(logits, batch["input_ids"], batch["attention_mask"], batch["label_mask"]).sum())
    if world > 1:
        total = D.all_reduce_sum(total)
    return [t / max(1, len(items)) for t in total]


def task_accuracy(model: nn.Module, items: list[TokenizedPair], pad_id: int, batch_size: int = 16,
                  place: Place = unmoved) -> float:
    """Mean object-token accuracy (teacher forced) of the tasks of ``items`` under ``model``, in [0, 1]
    (:func:`task_scores`)."""
    return task_scores(model, items, pad_id, batch_size, place)[0]


def rank_share(items: list, rank: int, world: int) -> tuple[list, float]:
    """This rank's part of a batch and the factor on its mean loss that makes the rank-averaged gradient the
    batch's mean: ``(items, n_r·world/N)``. [uneven batch note] Rank r holds n_r = ceil(N/world) consecutive
    documents (the last ranks fewer); a rank with none gets the batch's first document with factor 0, so every
    rank still runs the same forwards and backwards."""
    local = -(-len(items) // world)
    mine = items[rank * local : (rank + 1) * local]
    return (mine, len(mine) * world / len(items)) if mine else (items[:1], 0.0)


class _Learner:
    """What the three implementations share: the module θ's forwards run through and task accuracy."""

    module: nn.Module
    """θ itself (the Hugging Face / peft model; under ZeRO-3 its parameters are partitioned)."""
    model: nn.Module
    """What a training forward runs through: θ, or its DeepSpeed engine."""
    distributed = False

    def share(self, items: list) -> tuple[list, float]:
        """This rank's part of the batch ``items`` and the factor its mean loss takes ([uneven batch note])."""
        return rank_share(items, D.rank(), D.world_size())

    @torch.no_grad()
    def accuracy(self, items: list[TokenizedPair], pad_id: int, batch_size: int = 16, place: Place = unmoved) -> float:
        """:func:`task_accuracy` of θ, put in eval mode (and left so: a training step sets its own mode)."""
        self.module.eval()
        return task_accuracy(self.module, items, pad_id, batch_size, place)

    def nll_and_accuracy(self, items: list[TokenizedPair], pad_id: int, batch_size: int = 16,
                         place: Place = unmoved) -> tuple[float, float]:
        """Means over ``items`` of each task's marked-token NLL (nats per token; :func:`object_token_nll`) and
        accuracy under θ (one forward per batch), put in eval mode."""
        self.module.eval()
        nll, acc = task_scores(self.module, items, pad_id, batch_size, place, (object_token_nll, object_token_accuracy))
        return nll, acc


class LocalTheta(_Learner):
    """θ in one process with a torch AdamW (``lr``, no weight decay)."""

    def __init__(self, module: nn.Module, lr: float):
        self.module = self.model = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)

    def share(self, items: list) -> tuple[list, float]:
        return items, 1.0

    def update(self, loss: torch.Tensor) -> float:
        """One AdamW step on the scalar ``loss``; returns its value."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def save(self, directory: Path) -> None:
        """``theta.safetensors`` (the trainable tensors) and ``optimizer.pt`` in ``directory``."""
        from safetensors.torch import save_file

        save_file({n: p.detach().cpu().contiguous() for n, p in trainable_parameters(self.module)},
                  str(directory / "theta.safetensors"))
        torch.save(self.opt.state_dict(), directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        """The trainable tensors and optimizer state :meth:`save` wrote; refused when they are another θ's."""
        from safetensors.torch import load_file

        saved = load_file(str(directory / "theta.safetensors"))
        named = dict(trainable_parameters(self.module))
        if set(saved) != set(named):
            raise ConfigError(f"{directory}: its θ tensors ({len(saved)}) are not this θ's trainable ones "
                              f"({len(named)}); it was made by a run with other settings")
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(saved[n])
        self.opt.load_state_dict(ckpt.weights_only_load(directory / "optimizer.pt"))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """θ's trainable tensors, cloned onto the CPU."""
        return {n: p.detach().cpu().clone() for n, p in trainable_parameters(self.module)}


class Zero3Theta(_Learner):
    """θ as a DeepSpeed ZeRO-3 engine built by ``rt`` (:class:`~taalm_dist.engine.runtime.Runtime`) with
    ``ds_config`` (its AdamW); every rank calls every method."""

    distributed = True

    def __init__(self, rt, module: nn.Module, ds_config: dict):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.engine = self.model = rt.initialize(module, ds_config, model_parameters=self.params)
        self.module = self.engine.module

    def update(self, loss: torch.Tensor) -> float:
        """The engine's backward and step on this rank's (factor-scaled) ``loss``; returns the rank mean."""
        self.engine.backward(loss)
        self.engine.step()
        return D.all_reduce_mean([float(loss.detach())])[0]

    def save(self, directory: Path) -> None:
        """The engine's checkpoint (each rank its partitions and optimizer shard) under tag ``theta``."""
        self.engine.save_checkpoint(str(directory), tag="theta", save_latest=False)

    def load(self, directory: Path) -> None:
        """The engine's checkpoint of :meth:`save`; every rank fails together when any rank cannot load its part."""
        loaded = []
        load_on_every_rank(directory, lambda: loaded.append(self.engine.load_checkpoint(
            str(directory), tag="theta", load_optimizer_states=True, load_lr_scheduler_states=False)[0]))
        if loaded[0] is None:
            raise ConfigError(f"{directory}: DeepSpeed found no θ checkpoint there (was the run made with another "
                              "number of processes or on one process?)")

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """θ's trainable tensors gathered in full from every rank, cloned onto the CPU."""
        import deepspeed

        named = trainable_parameters(self.module)
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named}


class ViewTheta(_Learner):
    """The meta-trainer's θ view trained by a torch AdamW (``lr``, no weight decay) on its tensors — this rank's
    partitions under ZeRO-3, whose gradient :meth:`~taalm_dist.engine.zero3.Zero3ThetaView.grad` averages over ranks.
    It does not restore θ: its user snapshots and assigns (:func:`taalm_dist.engine.ckl_validation.ckl_validation`)."""

    def __init__(self, view, lr: float):
        self.view = view
        self.module = self.model = view.model
        self.params = view.params
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)

    def update(self, loss: torch.Tensor) -> float:
        """One AdamW step on this rank's (factor-scaled) ``loss``; returns its value on this rank."""
        for p, g in zip(self.params, self.view.grad(loss)):
            p.grad = g
        self.opt.step()
        self.view.sync()
        return float(loss.detach())

    def release(self) -> None:
        """Drop the gradients :meth:`update` left on θ's tensors."""
        for p in self.params:
            p.grad = None
