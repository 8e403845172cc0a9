"""`taalm plan`: its parameter counts are the models' own; its memory terms scale as the code's tensors do."""

import pytest

from taalm_dist.config import load_config
from taalm_dist.plan import SHAPES, Shape, largest_fitting, lora_params, model_shape, plan_memory, plan_report
from tiny_models import tiny_theta


def test_parameter_counts_match_real_models():
    theta = tiny_theta("float32")  # hidden 32, intermediate 64, 2 layers, LoRA r4 on q, v, down
    shape = Shape(32, 64, 2, 4, 2, theta.get_input_embeddings().weight.shape[0], False)
    frozen = sum(p.numel() for p in theta.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in theta.parameters() if p.requires_grad)
    assert shape.params() == frozen
    assert lora_params(shape, 4, ["q_proj", "v_proj", "down_proj"]) == trainable
    # SmolLM2-135M's published size: 134,515,008 parameters (tied embeddings)
    assert SHAPES["smollm2-135m"].params() == 134_515_008
    # Llama-2-7B: 6,738,415,616
    assert SHAPES["llama2-7b"].params() == 6_738_415_616


def test_config_shapes_are_read_or_refused_clearly(tmp_path):
    cfg = load_config(None, ["theta.model.tiny.hidden_size=48", "theta.model.tiny.num_heads=4"])
    assert model_shape(cfg.theta.model).hidden == 48
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, '
                                                '"num_attention_heads": 4, "vocab_size": 100}')
    shape = model_shape(load_config(None, [f"theta.model.source={tmp_path / 'm'}"]).theta.model)
    assert (shape.layers, shape.kv_heads, shape.tied) == (3, 4, False)
    from taalm_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="pass --theta-shape"):
        model_shape(load_config(None, [f"theta.model.source={tmp_path / 'nothing-here'}"]).theta.model)


def test_terms_scale_as_the_tensors_do():
    cfg = load_config("taalm_dist/configs/meta_train_llama2_tinyllama.yaml")
    kw = dict(theta_shape="llama2-7b", phi_shape="tinyllama-1.1b")
    one, eight = plan_memory(cfg, 1, **kw), plan_memory(cfg, 8, **kw)
    # ZeRO-3 divides parameters and optimizer state by the ranks (plus two gathered θ layers)
    gathered = 2 * SHAPES["llama2-7b"].layer_params() * 2 / 2**20
    assert eight.theta_base_mb == pytest.approx(one.theta_base_mb / 8 + gathered)
    assert eight.phi_params_mb == pytest.approx(one.phi_params_mb / 8)
    assert eight.phi_optimizer_mb == pytest.approx(one.phi_optimizer_mb / 8 * 16 / 12)  # + ZeRO-3's fp32 partition

    # activations: linear in tokens with SDPA, quadratic terms with eager attention; checkpointing keeps ~1/L of them
    a512, a1024 = (plan_memory(cfg, 1, tokens=T, docs=1, **kw).theta_activations_mb for T in (512, 1024))
    assert a1024 == pytest.approx(2 * a512)
    eager = load_config("taalm_dist/configs/meta_train_llama2_tinyllama.yaml", ["theta.model.attn_implementation=taalm_eager",
                                                                      "meta.method=jvp", "loss.impl=eager"])
    e512, e1024 = (plan_memory(eager, 1, tokens=T, docs=1, **kw).theta_activations_mb for T in (512, 1024))
    assert e1024 > 2.2 * e512
    ckpt = load_config("taalm_dist/configs/meta_train_llama2_tinyllama.yaml", ["engine.gradient_checkpointing=true"])
    assert plan_memory(ckpt, 1, **kw).theta_activations_mb < a512 / 5


def test_a_bf16_base_computing_in_float32_plans_its_heads_float32_copy_and_shapes_truncate():
    kw = dict(theta_shape="llama2-7b@2", phi_shape="tinyllama-1.1b", tokens=512, docs=1)
    bf16 = load_config(None, ["theta.model.dtype=bfloat16"])
    s = SHAPES["llama2-7b"]
    head = s.vocab * s.hidden * 4 / 2**20
    upcast, kept = (plan_memory(load_config(None, ["theta.model.dtype=bfloat16", f"meta.compute_float32={c}"]), 1, **kw)
                    for c in ("true", "false"))
    assert upcast.loss_mb == pytest.approx(kept.loss_mb + head)
    assert plan_memory(load_config(None, []), 1, **kw).loss_mb == pytest.approx(kept.loss_mb)  # float32: nothing to copy
    two, four = (plan_memory(bf16, 1, **{**kw, "theta_shape": f"llama2-7b@{n}"}) for n in (2, 4))
    assert four.theta_activations_mb == pytest.approx(2 * two.theta_activations_mb)
    assert model_shape(bf16.theta.model, "llama2-7b@2").hidden == 4096
    from taalm_dist.errors import ConfigError

    for bad in ("llama2-7b@0", "llama2-7b@two", "llama3@2"):
        with pytest.raises(ConfigError, match="NAME@N|layers ≥ 1"):
            model_shape(bf16.theta.model, bad)


def test_report_finds_the_limits_it_states():
    cfg = load_config("taalm_dist/configs/meta_train_llama2_tinyllama.yaml")
    rep = plan_report(cfg, 1, 80, 0.1, "llama2-7b", "tinyllama-1.1b")
    budget, T = rep["budget_mb"], rep["max_doc_tokens"]
    total = lambda tokens: plan_memory(cfg, 1, tokens=tokens, docs=1, theta_shape="llama2-7b",  # noqa: E731
                                       phi_shape="tinyllama-1.1b").total_mb
    assert total(T) <= budget < total(T + 1)
    assert largest_fitting(lambda x: x <= 37, 1, 100) == 37 and largest_fitting(lambda x: False, 1, 9) is None


def test_zero3_per_rank_bytes_match_what_deepspeed_holds():
    """BENCHMARKS.md (`taalm bench zero3`, 2 ranks, hidden 256, 4 layers, θ full, φ LoRA r16): DeepSpeed held per
    rank 8.39 MB of θ, 8.92 MB of φ's parameters and 2.16 MB of φ's optimizer (fp32 partitions + AdamW moments)."""
    shape = ["hidden_size=256", "intermediate_size=1024", "num_layers=4", "num_heads=4", "num_kv_heads=4"]
    cfg = load_config(None, [f"{m}.model.tiny.{s}" for m in ("theta", "phi") for s in shape] +
                      ["theta.trainable=full", "phi.trainable=lora", "engine.backend=deepspeed"])
    p = plan_memory(cfg, 2)
    assert p.theta_trainable_mb == pytest.approx(8.39, abs=0.01)
    assert p.phi_params_mb == pytest.approx(8.92, abs=0.01)
    # φ's optimizer as DeepSpeed counts it (fp32 partition + two moments: 12 of the plan's 16 bytes per parameter)
    assert p.phi_optimizer_mb * 12 / 16 == pytest.approx(2.16, abs=0.01)


def test_cli_prints_the_plan_and_refuses_bad_arguments(capsys):
    from taalm_dist.cli import main

    assert main(["plan", "--config", "taalm_dist/configs/meta_train_llama2_tinyllama.yaml", "--theta-shape", "llama2-7b",
                 "--phi-shape", "tinyllama-1.1b", "--memory-gb", "16"]) == 0
    out = capsys.readouterr().out
    assert "total per rank" in out and "does NOT fit in 16 GB" in out
    import pytest

    for flag, value, said in (("--world-size", "0", "0 must be >= 1"), ("--reserve", "1", "1.0 must be in [0, 1)"),
                              ("--memory-gb", "0", "0.0 must be in (0, ∞)")):
        with pytest.raises(SystemExit) as e:
            main(["plan", "--config", "taalm_dist/configs/meta_train_tiny.yaml", flag, value])
        assert e.value.code == 2 and f"argument {flag}: {said}" in capsys.readouterr().err
    assert main(["plan", "--config", "taalm_dist/configs/meta_train_tiny.yaml", "--theta-shape", "gpt5"]) == 2
    assert "unknown shape 'gpt5'" in capsys.readouterr().err
