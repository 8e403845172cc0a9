"""The one seeded shuffle: the orders every published run used."""

import random

from taalm_dist.data.order import CKL_STRIDE, DOC_STRIDE, epoch_rng, shuffled


def test_the_orders_are_the_ones_the_published_runs_used():
    items = list(range(20))
    for seed, epoch in ((0, 1), (3, 7)):
        ckl = list(items)
        random.Random(seed * 1000 + epoch).shuffle(ckl)  # ckl run / learn epochs, CKL validation passes
        assert shuffled(items, seed, epoch) == ckl and CKL_STRIDE == 1000
        docs = list(items)
        random.Random(seed * 1_000_003 + epoch).shuffle(docs)  # meta-training's document order
        assert shuffled(items, seed, epoch, DOC_STRIDE) == docs
    assert epoch_rng(2, 5).random() == random.Random(2005).random()
    assert shuffled(items, 0, 1) != shuffled(items, 0, 2) and items == list(range(20))  # a copy, per epoch
