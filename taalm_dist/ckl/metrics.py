"""LAMA-CKL metrics (docs/design.md §4).

Accuracy of a task sentence = fraction of the object's tokens that the model predicts, teacher forced
(:func:`taalm_dist.losses.accuracy.object_token_accuracy`). The object's tokens
are the task's ``label_mask`` (the object ends the task sentence). Per epoch: To-Learn accuracy (mean
over the variant set) and Not-To-Forget accuracy (mean over the invariant set); the run's summary is
Top Acc (best To-Learn accuracy over the trained epochs), Epoch (the first epoch that reaches it),
NF Acc (Not-To-Forget accuracy at that epoch) and Total Knowledge = Top Acc + NF Acc.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class CklSummary:
    """The paper's Table 1 columns for one run."""

    top_acc: float
    epoch: int
    nf_acc: float
    total_knowledge: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(to_learn: dict[int, float], not_to_forget: dict[int, float]) -> CklSummary:
    """Summary from per-epoch accuracies ``{epoch: acc}`` (epoch 0, before training, is not a candidate).

    Raises ValueError when no trained epoch is present or an epoch lacks its NF accuracy.
    """
    trained = sorted(e for e in to_learn if e >= 1)
    if not trained:
        raise ValueError("no trained epoch (>= 1) in the To-Learn series")
    top = max(to_learn[e] for e in trained)
    epoch = next(e for e in trained if to_learn[e] == top)
    if epoch not in not_to_forget:
        raise ValueError(f"epoch {epoch} has a To-Learn accuracy but no Not-To-Forget accuracy")
    nf = not_to_forget[epoch]
    return CklSummary(top_acc=top, epoch=epoch, nf_acc=nf, total_knowledge=top + nf)
