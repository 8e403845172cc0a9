"""`taalm bench zero3`: 2 gloo ranks hold about half of θ's and φ's parameters each (tiny models)."""

import pytest

from taalm_dist.bench.zero3 import bench_zero3

pytestmark = pytest.mark.distributed


def test_two_ranks_hold_half_the_parameters_and_report_throughput():
    res = bench_zero3((1, 2), hidden=64, layers=2, steps=1, docs_per_step=2, timeout_s=600)
    one, two = res["cases"]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["theta_param_mb"] > 0 and one["phi_param_mb"] > 0 and one["phi_optimizer_mb"] > 0
    assert 0.45 <= two["ratio_param_mem_vs_1_rank"] <= 0.6
    assert two["ratio_param_and_optimizer_mem_vs_1_rank"] <= 0.6
    assert one["docs_per_s"] > 0 and two["ratio_throughput_vs_1_rank"] > 0
    for c in (one, two):  # taalm plan's per-rank figures for the same config
        assert c["plan_theta_param_mb"] == pytest.approx(c["theta_param_mb"], rel=0.02)
        assert c["plan_phi_param_mb"] == pytest.approx(c["phi_param_mb"], rel=0.02)


def test_a_named_shape_sets_both_models_widths_and_depth():
    from taalm_dist.bench.zero3 import _overrides

    o = _overrides({"shape": "llama2-7b@2", "dtype": "bfloat16", "theta_trainable": "lora", "data": "d", "out": "o",
                    "docs_per_step": 2, "steps": 1})
    for m in ("theta", "phi"):
        assert {f"{m}.model.tiny.hidden_size=4096", f"{m}.model.tiny.intermediate_size=11008",
                f"{m}.model.tiny.num_layers=2", f"{m}.model.tiny.num_kv_heads=32", f"{m}.model.dtype=bfloat16"} <= set(o)
    assert "theta.trainable=lora" in o
