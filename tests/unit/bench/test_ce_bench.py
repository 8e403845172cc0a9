"""`taalm bench ce` at tiny sizes: the JSON's schema, the losses against an independent computation, and the
measured peaks against what each implementation must hold (eager: the full [T, V] logits; chunked: a chunk)."""

import json
import math

import pytest
import torch

from taalm_dist.bench.ce import _inputs, bench_ce
from taalm_dist.bench.common import machine_info, run_case_subprocess
from taalm_dist.losses import token_weighted_ce

T_SMALL, T_BIG, V, H = 512, 2048, 4096, 32  # the auto chunk is 512 tokens: one chunk at T_SMALL, four at T_BIG
MB = 2**20
CASE_TYPES = {"impl": str, "tokens": int, "vocab": int, "hidden": int, "dtype": str, "train_head": bool,
              "device": str, "threads": int, "wall_s": float, "peak_mb": float, "peak_rss_mb": float,
              "base_rss_mb": float, "loss": float, "max_rel_err_vs_eager": float, "ratio_time_vs_eager": float,
              "ratio_mem_vs_eager": float}  # fmt: skip
MACHINE_TYPES = {"platform": str, "python": str, "cpu": str, "cpu_count": int, "torch_threads": int,
                 "ram_gb": float, "torch": str, "cuda": (str, type(None)), "gpu": (str, type(None)), "date": str}


def _check_types(obj: dict, types: dict) -> None:
    for key, typ in types.items():
        assert type(obj[key]) in (typ if isinstance(typ, tuple) else (typ,)), (key, obj[key])  # exact: bool is no int


@pytest.fixture(scope="module")
def res():
    return bench_ce([T_SMALL, T_BIG], [V], [H], ["eager", "chunked"], repeats=1, threads=1, timeout_s=300)


@pytest.fixture(scope="module")
def cases(res):
    return {(c["impl"], c["tokens"]): c for c in res["cases"]}


def test_json_schema(res):
    doc = json.loads(json.dumps(res, allow_nan=False))  # strict JSON, as a reader of the printed document sees it
    assert doc == res and set(doc) == {"bench", "machine", "cases"} and doc["bench"] == "ce"
    _check_types(doc["machine"], MACHINE_TYPES)
    assert [(c["impl"], c["tokens"]) for c in doc["cases"]] == [("eager", T_SMALL), ("chunked", T_SMALL),
                                                                 ("eager", T_BIG), ("chunked", T_BIG)]
    for c in doc["cases"]:
        assert set(c) == set(CASE_TYPES), set(c) ^ set(CASE_TYPES)
        _check_types(c, CASE_TYPES)
        assert (c["vocab"], c["hidden"], c["dtype"], c["train_head"], c["device"], c["threads"]) == \
            (V, H, "float32", False, "cpu", 1)
        assert c["wall_s"] > 0 and c["peak_mb"] >= 0 and c["peak_rss_mb"] >= c["base_rss_mb"] > 0


@pytest.mark.parametrize("T", [T_SMALL, T_BIG])
def test_reported_losses_agree_with_each_other_and_an_independent_computation(cases, T):
    hidden, head, ids, weights, mask = _inputs(T, V, H, torch.float32, False, "cpu")
    with torch.no_grad():
        ref = token_weighted_ce(hidden.double() @ head.double().T, ids, weights.double(), mask).loss.item()
    assert math.log(V) * 0.9 < ref < math.log(V) * 1.2  # a random head: about uniform over the vocabulary
    eager, chunked = cases[("eager", T)], cases[("chunked", T)]
    assert eager["loss"] == pytest.approx(ref, rel=1e-5) and chunked["loss"] == pytest.approx(ref, rel=1e-5)
    assert chunked["loss"] == pytest.approx(eager["loss"], rel=1e-6)
    assert chunked["max_rel_err_vs_eager"] < 1e-5


def test_measured_peaks_follow_what_each_implementation_holds(cases):
    logits_mb = {T: T * V * 4 / MB for T in (T_SMALL, T_BIG)}  # one fp32 [T, V] tensor
    e_small, e_big = cases[("eager", T_SMALL)]["peak_mb"], cases[("eager", T_BIG)]["peak_mb"]
    c_small, c_big = cases[("chunked", T_SMALL)]["peak_mb"], cases[("chunked", T_BIG)]["peak_mb"]
    # eager materialises the full logits (and more: log-softmax, its gradient)
    assert e_small >= logits_mb[T_SMALL] and e_big >= logits_mb[T_BIG]
    # the bigger case holds at least the extra logits more
    assert e_big - e_small >= logits_mb[T_BIG] - logits_mb[T_SMALL], (e_small, e_big)
    # chunked holds one 512-token chunk of logits at a time: far below eager at four chunks, and it grows less
    assert c_big < 0.6 * e_big, (c_big, e_big)
    assert c_big - c_small < e_big - e_small, (c_small, c_big, e_small, e_big)


def test_ratios_are_quotients_of_the_measured_fields(cases):
    for T in (T_SMALL, T_BIG):
        eager, chunked = cases[("eager", T)], cases[("chunked", T)]
        assert chunked["ratio_time_vs_eager"] == pytest.approx(chunked["wall_s"] / eager["wall_s"])
        assert chunked["ratio_mem_vs_eager"] == pytest.approx(chunked["peak_mb"] / eager["peak_mb"])
        assert chunked["ratio_mem_vs_eager"] < 1  # same inputs, one chunk or more: never above eager


def test_machine_info_is_hostname_free():
    import socket

    info = machine_info()
    assert set(MACHINE_TYPES) <= info.keys()
    assert socket.gethostname() not in info.values() and "hostname" not in info


def test_failed_case_is_a_clear_error():
    with pytest.raises(RuntimeError, match="failed with exit code .*stderr tail"):
        run_case_subprocess("taalm_dist.bench.ce", {"impl": "eager"}, timeout_s=60)
