"""`taalm bench gradnoise`: the comparison's arithmetic, and the real trainer's φ gradients on the tiny config."""

import json
import math

import pytest
import torch

from taalm_dist.bench.gradnoise import bench_gradnoise, parse_method, summarize
from test_metatrain_bench import TINY


def test_summary_arithmetic_by_hand():
    ref = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64),
           torch.tensor([1.0, 1.0], dtype=torch.float64)]
    off = [g + torch.tensor([0.1, 0.0], dtype=torch.float64) for g in ref]
    tokens = [torch.ones(3, dtype=torch.float64)] * 3
    ref_case, case = summarize({"jvp": ref, "fd": off}, {"jvp": tokens, "fd": [t * 1.5 for t in tokens]},
                               {"jvp": [1.0, 2.0, 3.0], "fd": [1.0, 1.0, 1.0]})
    # mean [2/3, 2/3]; deviations' squared norms 5/9, 5/9, 2/9 → rms over K−1 = sqrt(2/3)
    assert ref_case["noise_rel"] == pytest.approx(math.sqrt(2 / 3) / math.hypot(2 / 3, 2 / 3))
    assert ref_case["cos_between_updates_mean"] == pytest.approx((0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3)
    assert ref_case["rel_err"] == [0.0, 0.0, 0.0] and ref_case["error_to_noise"] == 0.0
    assert ref_case["s_per_update"] == pytest.approx(2.0)
    assert case["rel_err"] == pytest.approx([0.1, 0.1, 0.1 / math.sqrt(2)])
    assert case["meta_grad_rel_err"] == pytest.approx([0.5, 0.5, 0.5])
    assert case["error_to_noise"] == pytest.approx(0.1 / math.sqrt(2 / 3))
    assert case["bias_rel"] == pytest.approx(0.1 / math.hypot(2 / 3, 2 / 3))
    assert case["reference"] == "jvp" and case["updates"] == 3 and "noise_rel" not in case


def test_method_specs():
    assert parse_method("fd") == ("fd", None) and parse_method("fd1:3e-4") == ("fd1", 3e-4)
    for bad in ("double_backward", "fd:0", "fd:-1e-3", "fd:abc", "sgd"):
        with pytest.raises(ValueError, match="must be one of"):
            parse_method(bad)
    with pytest.raises(ValueError, match="two or more different"):
        bench_gradnoise("taalm_dist/configs/meta_train_tiny.yaml", TINY, methods=("fd", "fd"))
    with pytest.raises(ValueError, match="updates=1 must be >= 2"):
        bench_gradnoise("taalm_dist/configs/meta_train_tiny.yaml", TINY, methods=("fd", "fd1"), updates=1)


@pytest.fixture(scope="module")
def res():
    # the tiny config's θ runs eager attention and the eager loss, so the exact jvp is the reference
    return bench_gradnoise("taalm_dist/configs/meta_train_tiny.yaml", TINY, methods=("jvp", "fd", "fd1", "fd:1e-3"), updates=3,
                           threads=1, n_meta=40)


def test_real_trainer_gradients_against_jvp(res):
    doc = json.loads(json.dumps(res, allow_nan=False))
    assert doc == res and doc["bench"] == "gradnoise" and doc["inner"] == "sgd"
    jvp, fd, fd1, fd_explicit = doc["cases"]
    assert [c["method"] for c in doc["cases"]] == ["jvp", "fd", "fd1", "fd:1e-3"]
    assert jvp["noise_rel"] > 0.1  # different documents give different φ gradients
    assert all(len(c["rel_err"]) == 3 for c in doc["cases"])
    # float32 differences on a full-parameter tiny θ with an SGD inner step: close to exact, far below the noise
    assert 0 < max(fd["rel_err"]) < 1e-2 and 0 < max(fd1["rel_err"]) < 5e-2
    assert fd["error_to_noise"] < 0.05 and fd1["error_to_noise"] < 0.1
    assert min(fd["cos_vs_reference"]) > 0.9999
    # 1e-3 is fd's float32 step for an SGD inner step: the same computation, bit for bit
    assert fd_explicit["rel_err"] == fd["rel_err"] and fd_explicit["meta_grad_rel_err"] == fd["meta_grad_rel_err"]
