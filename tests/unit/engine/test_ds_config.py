"""The DeepSpeed configs generated from the one config: batch arithmetic of θ's and φ's engines per pass layout."""

import pytest

from taalm_dist.config import load_config
from taalm_dist.engine import distributed as D
from taalm_dist.engine.ds_config import ds_configs, local_docs_per_pass, phi_backwards_per_update
from taalm_dist.engine.phi_update import DeepSpeedPhi
from taalm_dist.errors import ConfigError

LORA = ["theta.trainable=lora"]


@pytest.mark.parametrize("overrides, world, local, passes", [
    (["train.docs_per_step=8", "train.docs_per_inner_step=2"], 2, 1, 4),  # joint inner steps of 2: one per pass
    ([*LORA, "train.docs_per_step=8", "train.docs_per_pass=4"], 2, 2, 2),  # per-document passes of 4: 2 per rank
    ([*LORA, "train.docs_per_step=8", "train.docs_per_pass=4"], 1, 4, 2),
    ([*LORA, "train.docs_per_step=4", "train.docs_per_pass=4"], 4, 1, 1),
])
def test_phi_accumulates_one_backward_per_pass_of_each_ranks_share(overrides, world, local, passes):
    cfg = load_config(None, overrides)
    assert local_docs_per_pass(cfg, world) == local and phi_backwards_per_update(cfg) == passes
    phi = ds_configs(cfg, world)["phi"]
    assert phi["gradient_accumulation_steps"] == passes and phi["train_micro_batch_size_per_gpu"] == local
    assert phi["train_batch_size"] == cfg.train.docs_per_step


def test_a_pass_the_ranks_cannot_share_evenly_is_refused_with_the_field():
    cfg = load_config(None, [*LORA, "train.docs_per_step=6", "train.docs_per_pass=3"])
    with pytest.raises(ConfigError, match=r"train.docs_per_pass=3 must be a multiple of the number of processes \(2\)"):
        ds_configs(cfg, 2)
    with pytest.raises(ConfigError, match=r"train.docs_per_inner_step=3 must be a multiple"):
        ds_configs(load_config(None, ["train.docs_per_step=6", "train.docs_per_inner_step=3"]), 2)


class _Engine:
    def __init__(self, gas: int):
        self.module, self.gas = None, gas

    def gradient_accumulation_steps(self) -> int:
        return self.gas


@pytest.mark.parametrize("passes, world, micro_steps", [(4, 2, 4), (2, 2, 8), (1, 4, 4), (2, 1, 8)])
def test_the_surrogate_scale_makes_the_engines_average_the_mean_over_the_updates_inner_steps(monkeypatch, passes, world,
                                                                                            micro_steps):
    """The engine scales the summed backwards by 1/(passes · world); the ranks' dL/dw of a pass sum to the derivative of
    its inner steps' objectives, so the scale must turn that into 1/micro_steps (the one-process LocalPhi's factor)."""
    monkeypatch.setattr(D, "world_size", lambda: world)
    scale = DeepSpeedPhi(_Engine(passes)).surrogate_scale(micro_steps)
    assert scale / (passes * world) == pytest.approx(1.0 / micro_steps)
