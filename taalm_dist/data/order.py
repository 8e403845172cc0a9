"""The one seeded shuffle every program uses: the order of an epoch depends on the seed and the epoch alone, so a
resumed run sees the order an uninterrupted one saw, on any number of ranks."""

from __future__ import annotations

import random

CKL_STRIDE = 1000
"""The stride of ``ckl run`` / ``taalm learn`` epochs and of φ's CKL validation passes."""
DOC_STRIDE = 1_000_003
"""The stride of meta-training's document order and of ``ckl build``'s evaluation-row selection."""


def epoch_rng(seed: int, epoch: int, stride: int = CKL_STRIDE) -> random.Random:
    """The generator of ``epoch`` (any int: an epoch, a pass, a salt) under ``seed``: seeded ``seed·stride + epoch``.

    The two strides are kept as they were when the published results were made (changing one changes every
    order, and so every number, that used it)."""
    return random.Random(seed * stride + epoch)


def shuffled(items: list, seed: int, epoch: int, stride: int = CKL_STRIDE) -> list:
    """A copy of ``items`` in ``epoch``'s order (:func:`epoch_rng`)."""
    out = list(items)
    epoch_rng(seed, epoch, stride).shuffle(out)
    return out
