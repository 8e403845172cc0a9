"""The CKL methods as objects: each name is a weight rule and a change, a run asks its method and never its name,
and a new method is usable by registering it alone."""

import dataclasses

import pytest
import torch

from taalm_dist.config import load_config
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist.errors import ConfigError
from taalm_dist.programs.ckl_run import CklRunner
from taalm_dist.programs.methods import METHODS, KAdapter, Method, MixReview, Oracle, Phi, RecAdam, Rho1, Uniform

TINY = ["theta.model.tiny.hidden_size=32", "theta.model.tiny.intermediate_size=64"]


def test_each_shipped_name_is_its_rule_and_its_change():
    want = {"finetune": (Uniform, None), "oracle": (Oracle, None), "taalm": (Phi, None), "rho1": (Rho1, None),
            "mix_review": (Uniform, MixReview), "recadam": (Uniform, RecAdam), "kadapter": (Uniform, KAdapter),
            "taalm+mix_review": (Phi, MixReview), "taalm+recadam": (Phi, RecAdam), "taalm+kadapter": (Phi, KAdapter)}
    assert list(METHODS) == list(want)
    for name, (rule, change) in want.items():
        m = METHODS.lookup(name)
        assert type(m.rule) is rule and (m.change.name is None if change is None else type(m.change) is change)
        assert m.uses_phi == name.startswith("taalm")
    assert METHODS.lookup("mix_review").change.replays and METHODS.lookup("taalm+kadapter").change.kadapter
    with pytest.raises(ConfigError, match="'nope' is not one of"):
        METHODS.lookup("nope")


def test_a_new_method_registers_in_one_place_and_a_run_learns_with_it(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class FirstHalf(Uniform):
        """Weight 1 on the first half of each document's tokens, 0 on the rest."""

        name: str = "first_half"

        def build(self, trainer):
            def rule(doc):
                mask = doc["attention_mask"].float()
                n = mask.sum(1, keepdim=True)
                return mask * (torch.arange(mask.shape[1]) < n / 2).float()
            return rule

    METHODS.register("first_half", Method("first_half", FirstHalf()))
    try:
        write_pairs(toy_rows(4, seed=0, filler_words=6), tmp_path / "to_learn.jsonl")
        write_pairs(toy_rows(3, seed=1, filler_words=6, entity_offset=50), tmp_path / "not_to_forget.jsonl")
        runs = {}
        for name in ("first_half", "finetune"):
            runner = CklRunner(load_config(None, TINY + [f"ckl.data_dir={tmp_path}", f"ckl.method={name}",
                                                         f"ckl.out_dir={tmp_path / name}", "ckl.epochs=1",
                                                         "ckl.progress=false", "tracking.mlflow=false"]))
            try:
                runner.setup()
                runs[name] = runner.run()
            finally:
                runner.cleanup()
        assert runs["first_half"]["method"] == "first_half"
        assert runs["first_half"]["epochs"][1]["train_loss"] != runs["finetune"]["epochs"][1]["train_loss"]
        with pytest.raises(ValueError, match="registered already"):
            METHODS.register("first_half", Method("first_half", FirstHalf()))
    finally:
        del METHODS["first_half"]
    with pytest.raises(ConfigError, match=r"ckl.method='first_half' is not one of \['finetune'"):
        CklRunner(load_config(None, TINY + [f"ckl.data_dir={tmp_path}", "ckl.method=first_half",
                                            f"ckl.out_dir={tmp_path / 'gone'}"])).setup()
