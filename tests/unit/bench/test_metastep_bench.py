"""`taalm bench metastep` at the tiny size: every case runs, the JSON has the agreed fields and ratios."""

from taalm_dist.bench.metastep import bench_metastep

FIELDS = {"method", "inner", "tokens", "wall_s", "peak_mb", "theta_wall_s", "theta_peak_mb",
          "ratio_time_vs_double_backward", "ratio_mem_vs_double_backward", "ratio_time_vs_plain_step"}


def test_quick_metastep_bench_reports_every_case_with_ratios():
    res = bench_metastep([48], inners=("sgd",), theta="tiny", phi="tiny", task_tokens=8, repeats=1, threads=1,
                         timeout_s=300)
    assert res["bench"] == "metastep" and res["machine"]["cpu_count"]
    cases = {(c["method"], c["inner"]): c for c in res["cases"]}
    assert set(cases) == {("plain", None), ("jvp", "sgd"), ("fd", "sgd"), ("double_backward", "sgd")}
    for c in cases.values():
        assert "failed" not in c, c.get("failed")
        assert FIELDS <= c.keys() and c["wall_s"] > 0 and c["tokens"] == 48
    assert cases[("plain", None)]["theta_wall_s"] is None and cases[("plain", None)]["ratio_time_vs_plain_step"] == 1.0
    db = cases[("double_backward", "sgd")]
    assert db["ratio_time_vs_double_backward"] == 1.0
    for m in ("jvp", "fd"):
        c = cases[(m, "sgd")]
        assert c["theta_wall_s"] > 0 and c["ratio_time_vs_double_backward"] > 0 and c["ratio_time_vs_plain_step"] > 0
