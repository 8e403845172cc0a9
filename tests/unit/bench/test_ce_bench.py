import pytest

from taalm_dist.bench.ce import bench_ce
from taalm_dist.bench.common import machine_info, run_case_subprocess

CASE_KEYS = {"impl", "tokens", "vocab", "hidden", "dtype", "train_head", "device", "wall_s", "peak_mb", "peak_rss_mb",
             "ratio_time_vs_eager", "ratio_mem_vs_eager", "max_rel_err_vs_eager"}  # fmt: skip


def test_bench_ce_tiny_case_reports_every_field():
    res = bench_ce([64], [500], [32], ["eager", "chunked"], repeats=1, threads=1, timeout_s=120)
    assert res["bench"] == "ce" and res["machine"]["torch"]
    assert [c["impl"] for c in res["cases"]] == ["eager", "chunked"]
    for c in res["cases"]:
        assert CASE_KEYS <= c.keys(), CASE_KEYS - c.keys()
        assert (c["tokens"], c["vocab"], c["hidden"], c["dtype"], c["train_head"]) == (64, 500, 32, "float32", False)
        assert c["wall_s"] > 0 and c["peak_mb"] >= 0 and c["peak_rss_mb"] > 0
        assert c["max_rel_err_vs_eager"] < 1e-5 and c["threads"] == 1
    eager, chunked = res["cases"]
    assert eager["ratio_time_vs_eager"] == 1.0 and eager["max_rel_err_vs_eager"] == 0.0


def test_machine_info_is_hostname_free():
    import socket

    info = machine_info()
    assert {"platform", "cpu", "cpu_count", "torch_threads", "ram_gb", "torch", "gpu", "date"} <= info.keys()
    assert socket.gethostname() not in info.values() and "hostname" not in info


def test_failed_case_is_a_clear_error():
    with pytest.raises(RuntimeError, match="failed with exit code .*stderr tail"):
        run_case_subprocess("taalm_dist.bench.ce", {"impl": "eager"}, timeout_s=60)
