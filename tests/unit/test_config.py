import pytest

from taalm_dist.config import ConfigError, TaalmConfig, config_hash, load_config, save_config


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("meta:\n  inner: adamw\ntrain:\n  lr: 1.0e-3\n")
    cfg = load_config(f, ["meta.inner_lr=5e-4", "theta.lora.target_modules=[q_proj,v_proj]", "phi.num_layers=2"])
    assert cfg.meta.inner == "adamw" and cfg.meta.inner_lr == 5e-4 and cfg.train.lr == 1e-3
    assert cfg.theta.lora.target_modules == ["q_proj", "v_proj"] and cfg.phi.num_layers == 2


def test_saved_config_reads_back_identically(tmp_path):
    cfg = load_config(None, ["meta.adam_betas=[0.8,0.9]", "data.val_file=x.jsonl"])
    save_config(cfg, tmp_path / "r.yaml")
    again = load_config(tmp_path / "r.yaml")
    assert again == cfg and config_hash(again) == config_hash(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("meta.innr=sgd", "unknown config key 'meta.innr'"),
        ("nosuch.key=1", "unknown config key 'nosuch'"),
        ("meta.inner=rmsprop", "meta.inner='rmsprop' is not one of"),
        ("meta.inner_lr=fast", "meta.inner_lr='fast' must be of type float"),
        ("meta.inner_lr=-1", "meta.inner_lr=-1.0 must be > 0"),
        ("train.max_steps=-1", "train.max_steps=-1 must be >= 0"),
        ("theta.model.dtype=float16", "dtype='float16' is not one of"),
        ("meta.adam_betas=[0.9]", "meta.adam_betas=[0.9] must have 2 items"),
        ("meta.method=jvp", "theta.model.attn_implementation=taalm_eager"),
        ("theta.lora=3", "theta.lora must be a mapping"),
        ("novalue", "must look like key.sub=value"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("meta: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_field_is_documented():
    import ast
    import inspect

    import taalm_dist.config as mod

    tree = ast.parse(inspect.getsource(mod))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    doc = isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                    assert doc, f"{node.name}.{stmt.target.id} has no docstring"


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = list((root / "configs").glob("*.yaml")) + list((root / "taalm_dist" / "configs").glob("*.yaml"))
    assert files
    for f in files:
        assert isinstance(load_config(f), TaalmConfig)
        assert f.read_text().startswith("# Run: "), f"{f} must open with the command that runs it"
