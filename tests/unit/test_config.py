from pathlib import Path

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
        ("meta.inner_lr=-1", "meta.inner_lr=-1.0 is out of range: it must be > 0"),
        ("train.max_steps=-1", "train.max_steps=-1 is out of range: it must be >= 0"),
        # each of these was accepted (or ended in a traceback) before ranges were declared
        ("train.grad_clip=-1", "train.grad_clip=-1.0 is out of range: it must be > 0 (or null)"),
        ("meta.inner_lr=.nan", "meta.inner_lr=.nan must be a finite number"),
        ("train.lr=.inf", "train.lr=.inf must be a finite number"),
        ("train.save_every=-1", "train.save_every=-1 is out of range: it must be >= 0"),
        ("train.val_every=-1", "train.val_every=-1 is out of range: it must be >= 0"),
        ("meta.fd_eps=0", "meta.fd_eps=0.0 is out of range: it must be > 0 (or null)"),
        ("train.lr=-1", "train.lr=-1.0 is out of range: it must be > 0"),
        ("data.max_doc_tokens=0", "data.max_doc_tokens=0 is out of range: it must be >= 2"),
        ("data.max_doc_tokens=1", "data.max_doc_tokens=1 is out of range: it must be >= 2"),
        ("meta.adam_betas=[0.9,1.5]", "meta.adam_betas=[0.9, 1.5] is out of range: it must be in [0, 1)"),
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


def test_config_file_that_is_not_utf8_or_a_directory_is_named(tmp_path):
    # before: a UnicodeDecodeError traceback
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"train:\n  lr: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3 is not UTF-8 text \(byte b'\\xe9'\)"):
        load_config(bad)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbftrain:\n  lr: 0.5\n")
    assert load_config(bom).train.lr == 0.5
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_every_field_is_documented():
    import ast
    import inspect

    import taalm_dist.config as mod

    tree = ast.parse(inspect.getsource(mod))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign) and "ClassVar" not in ast.unparse(stmt.annotation):
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


# --------------------------------------------------------------------------------------------------
# every field's range, property-based

import dataclasses  # noqa: E402
import math  # noqa: E402
import typing  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from taalm_dist.config import Range, build  # noqa: E402


def _leaves(cls=TaalmConfig, prefix=""):
    """(dotted key, owning dataclass, field name, annotation) of every leaf field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", cls, f.name, tp


LEAVES = list(_leaves())


def _numeric(tp) -> type | None:
    """int or float when the field holds numbers (also inside Optional / tuple), else None."""
    args = [a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)]
    kinds = {a for a in args if a in (int, float)}
    return kinds.pop() if len(kinds) == 1 else None


NUMERIC = [(k, cls, name, _numeric(tp)) for k, cls, name, tp in LEAVES if _numeric(tp)]
CROSS_FIELD = ("theta.model.tiny.", "phi.model.tiny.", "learn.window_", "twiki.window_", "train.docs_per_")
"""Fields whose valid values also depend on another field (checked in __post_init__, with both named)."""


def _nested(key: str, value) -> dict:
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_numeric_field_declares_its_range():
    missing = [k for k, cls, name, _ in NUMERIC if name not in getattr(cls, "RANGES", {})]
    assert not missing, f"numeric config fields without a Range in their section's RANGES: {missing}"


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(),
                      st.text(max_size=6), st.lists(st.floats(), max_size=3),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_of_any_field_is_accepted_in_range_or_refused_with_config_error(data):
    key, cls, name, tp = data.draw(st.sampled_from(LEAVES))
    value = data.draw(ANY_VALUE)
    try:
        cfg = build(TaalmConfig, _nested(key, value))
    except ConfigError as e:
        assert key.split(".")[-1] in str(e) or key.split(".")[0] in str(e)
        return
    got = _get(cfg, key)
    rng = getattr(cls, "RANGES", {}).get(name)
    for item in (got if isinstance(got, (tuple, list)) else (got,)):
        if isinstance(item, float):
            assert math.isfinite(item), (key, value)
        if rng is not None and isinstance(item, (int, float)):
            assert rng.admits(item), (key, value, str(rng))


def _outside(rng: Range, kind: type):
    """Values outside ``rng`` (plus nan and ±inf for floats)."""
    options = []
    if kind is int:
        if rng.lo is not None:
            options.append(st.integers(max_value=math.ceil(rng.lo) - (0 if rng.lo_open else 1), min_value=-10**6))
        if rng.hi is not None:
            options.append(st.integers(min_value=math.floor(rng.hi) + (0 if rng.hi_open else 1), max_value=10**6))
    else:
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
        if rng.lo is not None:
            options.append(st.floats(max_value=rng.lo, exclude_max=not rng.lo_open, min_value=-1e12))
        if rng.hi is not None:
            options.append(st.floats(min_value=rng.hi, exclude_min=not rng.hi_open, max_value=1e12))
    return st.one_of(options) if options else st.nothing()


def _inside(rng: Range, kind: type):
    lo = -1e6 if rng.lo is None else rng.lo
    hi = lo + 1e3 if rng.hi is None else rng.hi
    if kind is int:
        return st.integers(min_value=math.ceil(lo) + (1 if rng.lo_open else 0), max_value=min(math.floor(hi), 10**6))
    return st.floats(min_value=lo, max_value=hi, exclude_min=rng.lo_open, exclude_max=rng.hi_open)


RANGED = [(k, cls, name, kind, cls.RANGES[name]) for k, cls, name, kind in NUMERIC if name in getattr(cls, "RANGES", {})
          and (rng := cls.RANGES[name]) and (rng.lo is not None or rng.hi is not None or kind is float)]


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_values_outside_a_fields_range_are_refused_naming_key_value_and_range(data):
    key, cls, name, kind, rng = data.draw(st.sampled_from(RANGED))
    value = data.draw(_outside(rng, kind))
    is_tuple = typing.get_origin(typing.get_type_hints(cls)[name]) is tuple
    raw = [0.5, value] if is_tuple else value
    with pytest.raises(ConfigError) as e:
        build(TaalmConfig, _nested(key, raw))
    message = str(e.value)
    assert message.startswith((key + "=", key + "["))
    assert ("must be a finite number" in message) if isinstance(value, float) and not math.isfinite(value) \
        else f"it must be {rng}" in message


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_values_inside_a_fields_range_are_accepted(data):
    key, cls, name, kind, rng = data.draw(st.sampled_from([r for r in RANGED if not r[0].startswith(CROSS_FIELD)]))
    value = data.draw(_inside(rng, kind))
    is_tuple = typing.get_origin(typing.get_type_hints(cls)[name]) is tuple
    cfg = build(TaalmConfig, _nested(key, [value, value] if is_tuple else value))
    assert _get(cfg, key) == ((value, value) if is_tuple else value)


def test_an_invalid_value_exits_2_without_traceback(capsys):
    from taalm_dist.cli import main

    assert main(["config", "show", "train.grad_clip=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("taalm: error: train.grad_clip=-1.0 is out of range") and "Traceback" not in err


def test_help_lists_every_config_field_with_its_default_and_range(capsys):
    from taalm_dist.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["meta-train", "--help"])
    text = capsys.readouterr().out
    for key, _, _, _ in LEAVES:
        if key.split(".")[0] in ("train", "meta", "data", "theta", "phi", "engine", "loss", "tracking"):
            assert f"  {key} = " in text, key
    assert "  train.grad_clip = 1.0  [> 0 or null]" in text and "  meta.inner = sgd  [sgd | adamw]" in text
    assert "Clip φ's gradient norm to this; null disables." in text
    assert "  --resume RESUME" in text and "(default: None)" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ckl", "run", "--help"])
    text = capsys.readouterr().out
    assert "  ckl.epochs = 30  [>= 1]" in text and "Epochs over the To-Learn evidence" in text


# --------------------------------------------------------------------------------------------------
# one config per program

from taalm_dist.config import (CklRunConfig, LearnRunConfig, MetaTrainConfig, PROGRAM_CONFIGS, TwikiRunConfig,  # noqa: E402
                               describe_fields, for_program)


def test_each_program_reads_its_own_sections_of_a_pipeline_file(tmp_path):
    f = tmp_path / "pipeline.yaml"  # as the demo's: meta-train and ckl run from one file
    f.write_text("data:\n  train_file: t.jsonl\n  max_doc_tokens: 64\ntrain:\n  max_steps: 7\nckl:\n  epochs: 3\n")
    meta = load_config(f, [], MetaTrainConfig)
    ckl = load_config(f, ["ckl.overwrite=true"], CklRunConfig)
    assert meta.train.max_steps == 7 and meta.data.train_file == "t.jsonl" and not hasattr(meta, "ckl")
    assert ckl.ckl.epochs == 3 and ckl.data.max_doc_tokens == 64 and ckl.ckl.overwrite
    assert not hasattr(ckl, "train") and not hasattr(ckl.data, "train_file")
    assert for_program(CklRunConfig, load_config(f)) == load_config(f, [], CklRunConfig)
    bad = tmp_path / "typo.yaml"
    bad.write_text("ckl:\n  epoch: 3\n")  # a typo in a section the program reads is still named
    with pytest.raises(ConfigError, match="unknown config key 'ckl.epoch'"):
        load_config(bad, [], CklRunConfig)


@pytest.mark.parametrize("program, override, message", [
    (CklRunConfig, "train.overwrite=true", "taalm ckl run reads train.overwrite as ckl.overwrite"),
    (CklRunConfig, "train.max_steps=3", "taalm ckl run does not read train.max_steps (it configures taalm meta-train)"),
    (LearnRunConfig, "ckl.epochs=2", "taalm learn does not read ckl.epochs (it configures taalm ckl run)"),
    (MetaTrainConfig, "learn.lr=1", "taalm meta-train does not read learn.lr (it configures taalm learn)"),
    (CklRunConfig, "data.train_file=x", "does not read data.train_file (it configures taalm meta-train)"),
    (CklRunConfig, "ckl.nosuch=1", "unknown config key 'ckl.nosuch'"),
])
def test_an_override_a_program_does_not_read_is_refused_with_where_it_belongs(program, override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override], program)
    assert message in str(e.value)


def test_program_help_lists_only_the_fields_it_reads():
    sections = {MetaTrainConfig: {"train", "meta", "data", "theta", "phi", "engine", "loss", "tracking"},
                CklRunConfig: {"ckl", "theta", "data", "engine", "loss", "tracking"},
                LearnRunConfig: {"learn", "theta", "engine", "loss", "tracking"},
                TwikiRunConfig: {"twiki", "theta", "engine", "loss", "tracking"}}
    for program in PROGRAM_CONFIGS:
        keys = [line.split()[0] for line in describe_fields(program).splitlines()[1:] if line.startswith("  ") and
                not line.startswith("      ")]
        assert {k.split(".")[0] for k in keys} == sections[program], program
    ckl_keys = describe_fields(CklRunConfig)
    assert "data.max_doc_tokens" in ckl_keys and "data.train_file" not in ckl_keys


def test_the_meta_training_checks_hold_in_every_config_that_has_its_sections():
    for cls in (MetaTrainConfig, TaalmConfig):
        with pytest.raises(ConfigError, match="loss.impl=chunked is differentiable once"):
            build(cls, {"loss": {"impl": "chunked"}, "meta": {"method": "jvp"},
                        "theta": {"model": {"attn_implementation": "taalm_eager"}}})


def test_a_shipped_config_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
    from taalm_dist.config import SHIPPED_CONFIGS, shipped_configs

    monkeypatch.chdir(tmp_path)  # as an installed package: no repository around
    assert load_config("meta_train_tiny") == load_config(SHIPPED_CONFIGS / "meta_train_tiny.yaml")
    assert set(shipped_configs()) == {f.stem for f in SHIPPED_CONFIGS.glob("*.yaml")}
    assert all(shipped_configs().values()), "every shipped config says what it is"
    with pytest.raises(ConfigError, match="neither a file nor a shipped config.*meta_train_tiny"):
        load_config("meta_train_tny")
    with pytest.raises(ConfigError, match="does not exist"):  # a path is a path
        load_config("taalm_dist/configs/meta_train_tiny.yaml")


def test_what_a_resumed_run_may_change_is_declared_beside_the_fields():
    from taalm_dist.config import resumable_keys

    run = ("out_dir", "overwrite", "resume", "keep_checkpoints", "progress")
    assert set(resumable_keys(MetaTrainConfig())) == {
        *(f"train.{k}" for k in (*run, "max_steps", "save_every", "save_every_s", "val_every", "time_limit_s")),
        "data.train_file", "data.val_file", "tracking."}
    documents = (*run, "epochs", "phi_path", "heatmap_docs", "eval_batch_size")
    assert set(resumable_keys(CklRunConfig())) == {*(f"ckl.{k}" for k in (*documents, "data_dir")), "tracking."}
    assert set(resumable_keys(TwikiRunConfig())) == {*(f"twiki.{k}" for k in (*documents, "data_dir")), "tracking."}
    assert set(resumable_keys(LearnRunConfig())) == {*(f"learn.{k}" for k in (*documents, "docs", "merge")),
                                                     "tracking."}


def test_the_type_checkers_taalm_config_is_the_generated_one():
    import ast
    import typing

    from taalm_dist import config

    tree = ast.parse(Path(config.__file__).read_text())
    stub = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "TaalmConfig")
    spelled = {a.target.id: ast.unparse(a.annotation) for a in stub.body if isinstance(a, ast.AnnAssign)}
    generated = {k: v.__name__ for k, v in typing.get_type_hints(TaalmConfig).items()}
    assert spelled == generated


def test_each_program_config_validates_across_sections_once_it_knows_its_world():
    meta = load_config(None, ["meta.method=jvp", "theta.model.attn_implementation=taalm_eager"], program=MetaTrainConfig)
    meta.validate(1)  # one process: jvp runs
    with pytest.raises(ConfigError, match="meta.method=jvp needs θ's full tensors; under DeepSpeed ZeRO-3"):
        meta.validate(2)
    with pytest.raises(ConfigError, match="train.phi_graph=keep is for one process"):
        load_config(None, ["train.phi_graph=keep"], program=MetaTrainConfig).validate(2)
    with pytest.raises(ConfigError, match="loss.impl=chunked is differentiable once"):  # checked when built
        load_config(None, ["meta.method=jvp", "theta.model.attn_implementation=taalm_eager", "loss.impl=chunked"],
                    program=MetaTrainConfig)
    for program, section in ((CklRunConfig, "ckl"), (TwikiRunConfig, "twiki"), (LearnRunConfig, "learn")):
        cfg = load_config(None, [f"{section}.batch_size=1"], program=program)
        cfg.validate(1)
        with pytest.raises(ConfigError, match=f"{section}.batch_size=1 is smaller than the 2 processes"):
            cfg.validate(2)
