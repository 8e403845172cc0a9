"""The package's layers: every import goes down (docs/design.md, "Layers"), and θ, its optimizer and a run
directory are each built in one place."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "taalm_dist"

LAYERS = {
    "errors": 0, "cache": 0, "integrity": 0, "registry": 0,
    "config": 1,
    "models": 2, "losses": 2, "tracking": 2,
    "data": 3,
    "meta": 4, "weight_rules": 4, "ckl": 4, "familiarity": 4,
    "engine": 5,
    "programs": 6, "weigh": 6, "plan": 6,
    "integrations": 7, "demo": 7, "bench": 7, "phi_from_docs": 7,
    "cli": 8,
    "launch": 9, "__init__": 9,
}
"""Each top-level module or package of taalm_dist and its layer (0: the bottom)."""


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported taalm_dist unit, line) of every import in ``path``, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "taalm_dist":
            if node.module == "taalm_dist":
                out += [(a.name, node.lineno) for a in node.names]
            else:
                out.append((_unit(node.module), node.lineno))
        elif isinstance(node, ast.Import):
            out += [(_unit(a.name), node.lineno) for a in node.names if a.name.startswith("taalm_dist.")]
    return out


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield path, rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem != "__init__" else "__init__"


def test_every_module_has_a_layer_and_imports_only_lower_layers():
    wrong = []
    for path, unit in _modules():
        assert unit in LAYERS, f"{path}: {unit} has no layer in LAYERS (and docs/design.md)"
        for target, line in _imports(path):
            if target != unit and LAYERS[target] >= LAYERS[unit]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({unit}, layer {LAYERS[unit]}) imports "
                             f"{target} (layer {LAYERS[target]})")
    assert not wrong, "\n".join(wrong)


def test_the_engine_imports_no_program_and_no_benchmark_code():
    for path, unit in _modules():
        if unit == "engine":
            assert not {t for t, _ in _imports(path)} & {"programs", "ckl", "cli", "demo"}, path


def _calls(pattern: str) -> set[str]:
    """The modules (paths relative to the package) whose code calls ``pattern``."""
    found = set()
    for path, _ in _modules():
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines()
                         if not line.lstrip().startswith("def "))
        if re.search(pattern, code):
            found.add(str(path.relative_to(PACKAGE)))
    return found


def test_theta_its_optimizer_and_a_run_directory_are_built_in_one_place_each():
    # θ: build_theta (φ's backbone is built by build_phi; merge_adapter, ckl build and data pairs' surprise method load
    # a base they do not train)
    assert _calls(r"\bmake_trainable\(") == {"models/theta.py", "models/train_attention.py"}
    assert _calls(r"\bload_causal_lm\(") == {"models/theta.py", "models/train_attention.py", "programs/learn.py",
                                             "ckl/build.py", "data/doc_pairs.py"}
    # AdamW: θ's learners and φ's one-process update
    assert _calls(r"optim\.AdamW\(") == {"engine/theta.py", "engine/phi_update.py"}
    # a run directory: the run session
    assert _calls(r"\bopen_run_dir\(") == {"engine/session.py"}
