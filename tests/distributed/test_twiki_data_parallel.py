"""`twiki run` data parallel over 2 gloo ranks (θ under ZeRO-3), through `bash launch/twiki_run.sh`, equals the
single-process run period by period."""

import json

import pytest
import yaml

from launching import deepspeed_launch
from taalm_dist.config import load_config
from taalm_dist.data.twiki_synth import write_twiki_synth
from taalm_dist.programs.twiki_run import TwikiRunner

# slow: the same DocumentTrainer as ckl run's 2-rank tests (in the default run); this adds the periods' switch
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_two_ranks_equal_one_process_period_by_period(tmp_path):
    write_twiki_synth(tmp_path / "data", entities=5, periods=2, change_rate=0.4, noise_lines=1, seed=1)
    settings = {"theta": {"model": {"tiny": {"hidden_size": 32, "intermediate_size": 64}}, "trainable": "lora",
                          "lora": {"rank": 4}},
                "twiki": {"data_dir": str(tmp_path / "data"), "epochs": 1, "batch_size": 3, "lr": 1e-12,
                          "max_probes": 7, "window_tokens": 64, "window_overlap": 8, "eval_batch_size": 3,
                          "progress": False},
                "engine": {"param_persistence_threshold": 0}, "tracking": {"mlflow": False}}
    config = tmp_path / "twiki.yaml"
    config.write_text(yaml.safe_dump(settings))
    deepspeed_launch("bash", "launch/twiki_run.sh", str(config), "--method", "finetune", "--out", str(tmp_path / "two"))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    runner = TwikiRunner(load_config(config, [f"twiki.out_dir={tmp_path / 'one'}", "engine.backend=single"]))
    try:
        runner.setup()
        one = runner.run()
    finally:
        runner.cleanup()
    assert two["setup"]["processes"] == 2 and [r["period"] for r in two["periods"]] == [None, "0809", "0910"]
    # θ barely moves (lr 1e-12), so sharding, uneven batches (3 over 2 ranks), the period switch, the probes split over
    # ranks and their reduction must give one process's numbers (as test_ckl_data_parallel's exact case)
    for a, b in zip(one["periods"], two["periods"]):
        for key in ("changed_nll", "unchanged_nll", "changed_acc", "changed_sro_ppl", "train_loss"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-6), key
