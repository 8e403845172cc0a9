"""The `taalm` command: errors are one clear line (exit 2, no traceback); the main paths run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def taalm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "taalm_dist.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          timeout=300)


def _assert_clean_error(res, *fragments):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in res.stderr, res.stderr


def test_unknown_config_key(tmp_path):
    _assert_clean_error(taalm("config", "show", "meta.inner_lrr=1"), "unknown config key 'meta.inner_lrr'")


def test_tokenizer_mismatch_is_refused(tmp_path):
    from taalm_dist.config import ModelSourceConfig, TinyModelConfig
    from taalm_dist.models import load_causal_lm
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, **{f"w{i}": i + 2 for i in range(50)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tmp_path / "m")
    load_causal_lm(ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)), vocab_size=52).save_pretrained(tmp_path / "m")
    taalm("data", "toy", "--out", str(tmp_path / "d"), "--n", "20")
    res = taalm("meta-train", "--config", "taalm_dist/configs/meta_train_tiny.yaml", f"phi.model.source={tmp_path / 'm'}",
                f"data.train_file={tmp_path / 'd' / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}")
    _assert_clean_error(res, "do not share a tokenizer")


def test_empty_document_and_bad_data_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"evidence": "PUNA", "task_descriptive": "the code of Kufa is PUNA", "object": "PUNA"}\n')
    res = taalm("meta-train", "--config", "taalm_dist/configs/meta_train_tiny.yaml", f"data.train_file={tmp_path / 'bad.jsonl'}",
                "data.val_file=null", "train.val_docs=0", f"train.out_dir={tmp_path / 'run'}")
    _assert_clean_error(res, "bad.jsonl:1: document has 1 token")
    res = taalm("meta-train", "--config", "taalm_dist/configs/meta_train_tiny.yaml", f"data.train_file={tmp_path / 'none.jsonl'}")
    _assert_clean_error(res, "none.jsonl does not exist")


def test_meta_train_cli_end_to_end(tmp_path):
    assert taalm("data", "toy", "--out", str(tmp_path / "d"), "--n", "40").returncode == 0
    res = taalm("meta-train", "--config", "taalm_dist/configs/meta_train_tiny.yaml", f"data.train_file={tmp_path / 'd' / 'train.jsonl'}",
                f"data.val_file={tmp_path / 'd' / 'val.jsonl'}", f"train.out_dir={tmp_path / 'run'}",
                "train.max_steps=3", "train.docs_per_step=2", "train.val_every=3", "train.progress=false")
    assert res.returncode == 0, res.stderr
    assert "validation objective" in res.stdout and (tmp_path / "run" / "phi" / "phi.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_every_verb_has_help_naming_its_defaults():
    cases = {("meta-train",): ["train.max_steps = 100  [>= 0]", "meta.inner_lr = 0.001  [> 0]"],
             ("ckl", "run"): ["ckl.epochs = 30  [>= 1]", "ckl.lr = 0.0001  [> 0]"],
             ("learn",): ["learn.window_tokens = 512  [>= 2]", "learn.epochs = 1  [>= 1]"],
             ("data", "toy"): ["--n N      training pairs (default: 200)"],
             ("demo",): ["(default: runs/demo)", "(default: 3600.0)"],
             ("weigh",): ["(default: 512)"],
             ("config", "show"): ["YAML config; omitted: the defaults"]}
    for verb, expected in cases.items():
        res = taalm(*verb, "--help")
        assert res.returncode == 0 and "usage:" in res.stdout
        flat = " ".join(res.stdout.split())
        for text in expected:
            assert " ".join(text.split()) in flat, (verb, text)


def test_program_flags_come_from_the_config_fields_and_help_lists_only_the_programs_fields():
    res = taalm("ckl", "run", "--help")
    flat = " ".join(res.stdout.split())
    assert res.returncode == 0
    assert "--overwrite" in flat and "[sets ckl.overwrite; config default: false]" in flat
    assert "[sets ckl.phi_path; none: null; config default: null]" in flat
    fields = re.findall(r"^  ([a-z_]+)\.\S+ = ", res.stdout, re.M)  # the epilog's field lines: "  ckl.lr = ..."
    assert set(fields) == {"ckl", "theta", "data", "engine", "loss", "tracking"}
    res = taalm("meta-train", "--help")
    fields = re.findall(r"^  ([a-z_]+)\.\S+ = ", res.stdout, re.M)
    assert res.returncode == 0 and set(fields) == {"train", "meta", "data", "theta", "phi", "engine", "loss", "tracking"}
    # a key another program reads is refused with where it belongs, before anything runs
    _assert_clean_error(taalm("ckl", "run", "--data-dir", "nowhere", "train.overwrite=true"),
                        "taalm ckl run reads train.overwrite as ckl.overwrite")
