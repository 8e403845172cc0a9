"""θ's one interface (engine/theta.py): the one-process learner and the meta-trainer's view learner take the same
AdamW step, a checkpoint round-trips, a batch splits over ranks with the factors that make the mean."""

import copy

import pytest
import torch

from taalm_dist.data import TokenizedPair
from taalm_dist.engine.theta import LocalTheta, ViewTheta, rank_share, task_accuracy
from taalm_dist.errors import ConfigError
from taalm_dist.losses import eager_per_token_nll, next_token_valid_mask, token_weighted_mean
from taalm_dist.meta.functional import ThetaView
from tiny_models import make_batches, tiny_theta


def _loss(model, doc, w):
    return token_weighted_mean(eager_per_token_nll(model, doc), w, next_token_valid_mask(doc["attention_mask"]))


def test_local_and_view_learners_take_the_same_adamw_steps():
    doc, w, _ = make_batches(seed=3)
    a = tiny_theta("float64").eval()  # no dropout: the same numbers
    b = copy.deepcopy(a)
    local, view = LocalTheta(a, lr=1e-2), ViewTheta(ThetaView(b), lr=1e-2)
    before = [p.detach().clone() for p in local.params]
    for _ in range(3):
        assert local.update(_loss(a, doc, w)) == pytest.approx(view.update(_loss(b, doc, w)), rel=1e-12)
    for p, q, p0 in zip(local.params, view.params, before):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)
    assert any(not torch.equal(p, p0) for p, p0 in zip(local.params, before))  # they did move
    view.release()
    assert all(p.grad is None for p in view.params)


def test_a_local_checkpoint_round_trips_and_another_thetas_is_refused(tmp_path):
    doc, w, _ = make_batches(seed=1)
    model = tiny_theta("float64")
    learner = LocalTheta(model, lr=1e-2)
    learner.update(_loss(model, doc, w))
    learner.save(tmp_path)
    fresh = LocalTheta(copy.deepcopy(model), lr=1e-2)
    with torch.no_grad():
        for p in fresh.params:
            p.zero_()  # nothing of the trained values left but what load restores
    fresh.load(tmp_path)
    for n, t in learner.trainable_state().items():
        torch.testing.assert_close(fresh.trainable_state()[n], t, rtol=0, atol=0)
    # the next step from the loaded optimizer state equals the uninterrupted one
    assert fresh.update(_loss(fresh.module, doc, w)) == learner.update(_loss(model, doc, w))
    for p, q in zip(fresh.params, learner.params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    full = LocalTheta(tiny_theta("float64", trainable="full"), lr=1e-2)
    with pytest.raises(ConfigError, match="are not this θ's trainable ones"):
        full.load(tmp_path)


@pytest.mark.parametrize("n, world", [(4, 2), (5, 2), (3, 4), (1, 2)])
def test_rank_shares_cover_the_batch_and_their_factors_make_the_mean(n, world):
    items = list(range(n))
    shares = [rank_share(items, r, world) for r in range(world)]
    counted = [x for mine, f in shares if f for x in mine]
    assert counted == items  # every document once, in order
    # Σ_r factor_r · mean_r(loss) / world == mean over the batch, for any per-document losses
    losses = torch.rand(n, dtype=torch.float64)
    combined = sum(f * float(losses[mine].mean()) for mine, f in shares) / world
    assert combined == pytest.approx(float(losses.mean()), rel=1e-12)


def test_accuracy_leaves_theta_in_eval_mode_and_counts_every_task():
    model = tiny_theta("float64").train()
    ids = [5, 6, 7, 8, 9]
    item = TokenizedPair(None, [], [], ids, [0, 0, 0, 1, 1], False)
    learner = LocalTheta(model, lr=1e-3)
    acc = learner.accuracy([item, item, item], pad_id=0, batch_size=2)
    assert not model.training
    assert acc == task_accuracy(model, [item], pad_id=0)
