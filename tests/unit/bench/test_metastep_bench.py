"""`taalm bench metastep` at the tiny size: every case runs in its own process; the closed-form meta-gradients
(jvp, fd) agree with the double backward's, computed in another process; the time and memory fields relate to
each other as the measurement order says; the ratios are quotients of fields measured in other processes."""

import json

import pytest

from taalm_dist.bench.metastep import bench_metastep

CASE_TYPES = {"method": str, "inner": (str, type(None)), "tokens": int, "task_tokens": int, "theta": str, "phi": str,
              "dtype": str, "phi_graph": str, "device": str, "threads": int, "real_weights": bool, "loss_impl": str,
              "wall_s": float, "peak_mb": float, "theta_wall_s": (float, type(None)),
              "theta_peak_mb": (float, type(None)), "ratio_time_vs_double_backward": (float, type(None)),
              "ratio_mem_vs_double_backward": (float, type(None)),
              "ratio_whole_time_vs_double_backward": (float, type(None)), "ratio_time_vs_plain_step": float,
              "meta_grad_cos_vs_double_backward": (float, type(None)),
              "meta_grad_rel_err_vs_double_backward": (float, type(None))}  # fmt: skip
METHODS = ("jvp", "fd", "fd1", "double_backward")


@pytest.fixture(scope="module")
def res():
    return bench_metastep([48], inners=("sgd",), theta="tiny", phi="tiny", task_tokens=8, repeats=3, threads=1,
                          timeout_s=300)


@pytest.fixture(scope="module")
def cases(res):
    return {c["method"]: c for c in res["cases"]}


def test_json_schema(res, cases):
    doc = json.loads(json.dumps(res, allow_nan=False))
    assert doc == res and set(doc) == {"bench", "machine", "cases"} and doc["bench"] == "metastep"
    assert [(c["method"], c["inner"]) for c in doc["cases"]] == [("plain", None)] + [(m, "sgd") for m in METHODS]
    for c in doc["cases"]:
        assert "failed" not in c, c.get("failed")
        expected = set(CASE_TYPES) | ({"meta_grad_norm"} if c["method"] != "plain" else set())
        assert set(c) == expected, set(c) ^ expected
        for key, typ in (CASE_TYPES | {"meta_grad_norm": float}).items():
            if key in c:
                assert type(c[key]) in (typ if isinstance(typ, tuple) else (typ,)), (key, c[key])
        assert (c["tokens"], c["task_tokens"], c["device"], c["threads"], c["real_weights"]) == (48, 8, "cpu", 1, False)
        assert c["wall_s"] > 0 and c["peak_mb"] >= 0
    plain = cases["plain"]
    assert plain["theta_wall_s"] is None and plain["theta_peak_mb"] is None
    assert plain["meta_grad_cos_vs_double_backward"] is None and plain["ratio_time_vs_double_backward"] is None
    assert cases["double_backward"]["meta_grad_cos_vs_double_backward"] is None  # not compared with itself
    # the loss each method runs θ with (jvp and double backward need the eager one)
    assert {m: cases[m]["loss_impl"] for m in ("plain", *METHODS)} == \
        {"plain": "fused", "jvp": "eager", "fd": "fused", "fd1": "fused", "double_backward": "eager"}


def test_closed_form_meta_gradients_agree_with_double_backward(cases):
    ref = cases["double_backward"]["meta_grad_norm"]
    assert ref > 0  # a real meta-gradient, not zeros
    jvp, fd, fd1 = cases["jvp"], cases["fd"], cases["fd1"]
    # jvp is exact up to rounding; fd / fd1 are central / one-sided differences at eps 1e-3 in fp32
    assert jvp["meta_grad_rel_err_vs_double_backward"] < 1e-4 and jvp["meta_grad_cos_vs_double_backward"] > 0.9999
    for c in (fd, fd1):
        assert c["meta_grad_rel_err_vs_double_backward"] < 0.05 and c["meta_grad_cos_vs_double_backward"] > 0.999
    for c in (jvp, fd, fd1):
        assert c["meta_grad_norm"] == pytest.approx(ref, rel=0.05)


def test_theta_side_is_contained_in_the_whole_meta_step(cases):
    for m in METHODS:
        c = cases[m]
        assert c["theta_wall_s"] > 0 and c["theta_peak_mb"] >= 0
        # the whole step runs the θ side plus φ's passes and step (best of 3 each; a little slack for noise)
        assert c["theta_wall_s"] <= 1.1 * c["wall_s"], (m, c["theta_wall_s"], c["wall_s"])
        # measured after the θ side against the same baseline: the peak so far cannot have dropped
        assert c["peak_mb"] >= c["theta_peak_mb"], (m, c["peak_mb"], c["theta_peak_mb"])


def test_ratios_are_quotients_of_fields_measured_in_other_processes(cases):
    db, plain = cases["double_backward"], cases["plain"]
    for m in METHODS:
        c = cases[m]
        assert c["ratio_time_vs_double_backward"] == pytest.approx(c["theta_wall_s"] / db["theta_wall_s"])
        assert c["ratio_whole_time_vs_double_backward"] == pytest.approx(c["wall_s"] / db["wall_s"])
        assert c["ratio_time_vs_plain_step"] == pytest.approx(c["wall_s"] / plain["wall_s"])
        if db["theta_peak_mb"] > 0:
            assert c["ratio_mem_vs_double_backward"] == pytest.approx(c["theta_peak_mb"] / db["theta_peak_mb"])
    # a meta-step does a plain step's work and more (θ's inner step, the task loss, φ's passes)
    assert all(cases[m]["wall_s"] > plain["wall_s"] for m in METHODS)


def test_checkpointed_variant_computes_the_same_meta_gradient():
    res = bench_metastep([48], methods=("fd", "fd-ckpt"), inners=("sgd",), theta="tiny", phi="tiny", task_tokens=8,
                         repeats=1, threads=1, timeout_s=300)
    by = {c["method"]: c for c in res["cases"]}
    assert set(by) == {"plain", "fd", "fd-ckpt"} and by["fd-ckpt"]["loss_impl"] == "fused"
    assert by["fd-ckpt"]["meta_grad_norm"] == pytest.approx(by["fd"]["meta_grad_norm"], rel=1e-5)
    with pytest.raises(ValueError, match="unknown methods"):
        bench_metastep([48], methods=("jvp-ckpt",))
