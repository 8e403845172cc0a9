"""`taalm bench metatrain` on the tiny config: it runs the real trainer's φ updates and reports them consistently."""

import json
import math
import statistics

import pytest

from taalm_dist.bench.metatrain import bench_metatrain

TINY = ["theta.model.tiny.hidden_size=32", "theta.model.tiny.intermediate_size=64", "phi.model.tiny.hidden_size=32",
        "phi.model.tiny.intermediate_size=64", "data.max_doc_tokens=48", "train.docs_per_step=4"]


@pytest.fixture(scope="module")
def res():
    return bench_metatrain("taalm_dist/configs/meta_train_tiny.yaml", TINY + ["meta.method=fd1"], steps=3, warmup=1, threads=1,
                           n_meta=40)


def test_schema_and_relations(res):
    doc = json.loads(json.dumps(res, allow_nan=False))
    assert doc == res and doc["bench"] == "metatrain" and len(doc["cases"]) == 1
    c = doc["cases"][0]
    assert (c["method"], c["inner"], c["docs_per_step"], c["steps"], c["warmup"], c["threads"]) == ("fd1", "sgd", 4, 3, 1, 1)
    assert c["docs_per_pass"] == 1  # the config's default: documents one at a time
    assert len(c["s_per_update_all"]) == 3 and all(t > 0 for t in c["s_per_update_all"])
    assert c["s_per_update"] == pytest.approx(statistics.median(c["s_per_update_all"]))
    assert c["docs_per_s"] == pytest.approx(4 / c["s_per_update"])
    assert c["setup_s"] > 0


def test_learning_curve_is_validated_before_and_every_n_updates():
    res = bench_metatrain("taalm_dist/configs/meta_train_tiny.yaml", TINY + ["train.val_docs=4"], steps=3, warmup=1, threads=1,
                          n_meta=40, val_every=2)
    c = res["cases"][0]
    assert [u for u, _ in c["curve"]] == [0, 2, 4] and c["val_docs"] == 4
    assert len(c["s_per_update_all"]) == 3  # validation is not a timed update
    values = [v for _, v in c["curve"]]
    assert all(math.isfinite(v) and v > 0 for v in values) and len(set(values)) == 3  # φ moved between them


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="steps=0 must be >= 1"):
        bench_metatrain("taalm_dist/configs/meta_train_tiny.yaml", TINY, steps=0)
    with pytest.raises(ValueError, match="val_every=-1 >= 0"):
        bench_metatrain("taalm_dist/configs/meta_train_tiny.yaml", TINY, val_every=-1)
