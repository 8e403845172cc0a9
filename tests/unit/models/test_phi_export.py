"""A φ export that is damaged, altered or not finite is refused by name, wherever φ is loaded (load_phi: `weigh`,
`learn`, `ckl run`, TokenWeigher); models are only loaded without their own code. Each case is one the second
reliability probe found (2026-12-06): before, each gave a traceback, loaded silently, or asked to run code."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from taalm_dist import integrity
from taalm_dist.config import LoraConfig, ModelSourceConfig, PhiConfig, TinyModelConfig
from taalm_dist.errors import ModelError
from taalm_dist.models import build_phi, load_phi, save_phi
from taalm_dist.models.loading import from_pretrained
from taalm_dist.models.train_attention import phi_fingerprint

CFG = PhiConfig(model=ModelSourceConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64)),
                lora=LoraConfig(rank=4, target_modules=["q_proj"]))


@pytest.fixture
def phi_dir(tmp_path):
    return save_phi(build_phi(CFG), CFG, tmp_path / "phi")


def _rewrite_tensors(path, edit):
    """Change φ's tensors and rewrite the record, as a tool that edits and re-exports would (so only the check on
    the content itself can catch it)."""
    state = load_file(str(path / "phi.safetensors"))
    edit(state)
    save_file(state, str(path / "phi.safetensors"))
    integrity.write_record(path)


def test_an_export_holds_an_integrity_record_and_loads(phi_dir):
    assert integrity.verify_record(phi_dir) == [] and (phi_dir / integrity.RECORD).is_file()
    load_phi(phi_dir)
    assert set(phi_fingerprint(phi_dir)) == {"phi.safetensors", "phi_config.json"}


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "phi.safetensors").write_bytes((p / "phi.safetensors").read_bytes()[:100]), "is damaged: phi.safetensors has 100 bytes"),
    (lambda p: (p / "phi.safetensors").write_bytes(b""), "is damaged: phi.safetensors has 0 bytes"),
    (lambda p: (p / "phi_config.json").write_text("{not json"), "phi_config.json is not readable JSON"),
    (lambda p: (p / "phi_config.json").write_text(json.dumps({"format": 7, "phi": {}})), "format 7 is not one this version reads"),
])
def test_a_damaged_export_is_refused_by_name(phi_dir, damage, message):
    damage(phi_dir)
    with pytest.raises(ModelError, match=message):
        load_phi(phi_dir)


def test_a_bit_flip_in_tensor_data_is_found(phi_dir):
    data = bytearray((phi_dir / "phi.safetensors").read_bytes())
    data[-3] ^= 0x10  # the last bytes are tensor data: the file still parses
    (phi_dir / "phi.safetensors").write_bytes(bytes(data))
    load_file(str(phi_dir / "phi.safetensors"))
    with pytest.raises(ModelError, match="phi.safetensors differs from what was written"):
        load_phi(phi_dir)


def test_a_truncated_export_without_a_record_is_named_not_a_traceback(phi_dir):
    (phi_dir / integrity.RECORD).unlink()  # an export of an earlier version
    (phi_dir / "phi.safetensors").write_bytes((phi_dir / "phi.safetensors").read_bytes()[:100])
    with pytest.raises(ModelError, match="is not a readable safetensors file"):
        load_phi(phi_dir)


def test_edited_shapes_are_named(phi_dir):
    _rewrite_tensors(phi_dir, lambda s: s.update({"head.weight": torch.zeros(1, 16)}))
    with pytest.raises(ModelError, match=r"head.weight \(1, 16\) \(config builds \(1, 32\)\)"):
        load_phi(phi_dir)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_phi_is_refused_on_load_and_never_saved(phi_dir, value, tmp_path):
    _rewrite_tensors(phi_dir, lambda s: s["head.bias"].fill_(value))
    with pytest.raises(ModelError, match=r"non-finite values in head.bias"):
        load_phi(phi_dir)
    phi = build_phi(CFG)
    with torch.no_grad():
        phi.head.bias.fill_(value)
    with pytest.raises(ModelError, match="non-finite values in head.bias"):
        save_phi(phi, CFG, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_model_directory_that_ships_code_is_refused_before_transformers_sees_it(tmp_path):
    from transformers import AutoConfig

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {
        "AutoConfig": "evil.EvilConfig"}}))
    (tmp_path / "evil.py").write_text("raise SystemExit('code of the model ran')\n")
    with pytest.raises(ModelError, match=r"config.json declares custom code \(auto_map\)"):
        from_pretrained(AutoConfig, str(tmp_path))


def test_every_loader_goes_through_from_pretrained():
    """trust_remote_code=False in one place: no other call of a from_pretrained in the package."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[3] / "taalm_dist"
    calls = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"):
                owner = ast.unparse(node.func.value)
                calls.append(f"{path.relative_to(package)}: {owner}")
    assert sorted(calls) == ["models/loading.py: auto_class", "programs/learn.py: PeftModel"], calls


def test_re_exporting_into_a_folder_drops_the_old_familiarity_record(tmp_path):
    """A φ exported twice into one folder (a run's phi_last/): the first export's familiarity record describes the
    old weights, so it goes, and the folder stays intact (it used to be listed in the integrity record and then
    rewritten, which made the φ read as damaged)."""
    phi = build_phi(CFG)
    save_phi(phi, CFG, tmp_path / "phi")
    for name in ("familiarity.json", "familiarity.safetensors"):
        (tmp_path / "phi" / name).write_text("the first export's record")
    save_phi(phi, CFG, tmp_path / "phi")
    assert not (tmp_path / "phi" / "familiarity.json").exists()
    assert "familiarity.json" not in json.loads((tmp_path / "phi" / "integrity.json").read_text())["files"]
    load_phi(tmp_path / "phi")
