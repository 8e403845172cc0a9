"""constraints.txt (the lock `make install` uses) vs the running environment and vs pyproject.toml's ranges.

Fails when the environment drifts from the lock (a package upgraded by hand, a lock not regenerated after an
install) and when a pin falls outside a range that pyproject.toml promises to library users."""

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the lock is resolved on 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def _pins() -> dict[str, tuple[str, Version]]:
    """canonical name -> (name as written, pinned version); every non-comment line must be an exact pin."""
    pins = {}
    for n, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"constraints.txt:{n}: {line!r} is not an exact `name==version` pin"
        key = canonicalize_name(m[1])
        assert key not in pins, f"constraints.txt:{n}: {m[1]} is pinned twice"
        pins[key] = (m[1], Version(m[2]))
    return pins


def _installed() -> dict[str, str]:
    """canonical name -> version of the distribution that imports would see (first on sys.path wins)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _make_install_extras() -> list[str]:
    """The extras `make install` installs the project with (its `pip install -e ".[...]"` line)."""
    m = re.search(r'-e\s+"\.\[([^\]]+)\]"', (ROOT / "Makefile").read_text())
    assert m, "the Makefile no longer installs the project as -e \".[extras]\""
    return [e.strip() for e in m[1].split(",")]


def _admits(spec: SpecifierSet, version: Version) -> bool:
    return spec.contains(version, prereleases=True)


def test_lock_is_exact_and_omits_the_project():
    pins = _pins()
    assert len(pins) > 20  # the whole environment, not a handful of top-level names
    assert canonicalize_name(_pyproject()["project"]["name"]) not in pins
    for name, version in pins.values():
        assert not version.local, f"{name}=={version}: pin the public version (the same pin serves CPU and CUDA)"


def test_running_environment_holds_exactly_the_locked_versions():
    installed = _installed()
    missing, drifted = [], []
    for key, (name, pinned) in sorted(_pins().items()):
        if key not in installed:
            missing.append(name)
        elif not _admits(SpecifierSet(f"=={pinned}"), Version(installed[key])):  # 2.13.0 admits 2.13.0+cpu
            drifted.append(f"{name}: installed {installed[key]}, locked {pinned}")
    assert not missing and not drifted, (
        f"environment differs from constraints.txt (run `make install`, or `make lock` after a deliberate change)\n"
        f"missing: {missing}\ndrifted: {drifted}"
    )


def test_every_pin_is_admitted_by_the_pyproject_ranges():
    project, pins = _pyproject()["project"], _pins()
    groups = {"dependencies": project["dependencies"]} | project["optional-dependencies"]
    installed_groups = {"dependencies", *_make_install_extras()}
    bad, unpinned = [], []
    for group, reqs in groups.items():
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate():
                continue
            key = canonicalize_name(req.name)
            if key not in pins:
                if group in installed_groups:  # make install installs it, so the lock must pin it
                    unpinned.append(f"{group}: {text}")
                continue
            name, pinned = pins[key]
            if not _admits(req.specifier, pinned):
                bad.append(f"{group}: {text} excludes the locked {name}=={pinned}")
    assert not unpinned, f"installed by make install but missing from constraints.txt (run make lock): {unpinned}"
    assert not bad, "\n".join(bad)


def test_make_installs_every_pip_command_under_the_lock():
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "$(CONSTRAINTS)" in recipe.splitlines()[0]  # the venv is rebuilt when the lock changes
    assert re.search(r"^CONSTRAINTS\s*:?=\s*constraints\.txt\s*$", make, re.M)
    installs = [line for line in recipe.splitlines()[1:] if "pip install" in line or "PIP_INSTALL" in line]
    assert len(installs) == 3, installs
    pip_install = re.search(r"^PIP_INSTALL\s*:?=(.*)$", make, re.M)[1]
    assert "-c $(CONSTRAINTS)" in pip_install
    for line in installs:
        assert "$(PIP_INSTALL)" in line, f"{line.strip()!r} bypasses the lock"


def test_torch_pin_of_the_makefile_matches_the_lock():
    torch_cpu = re.search(r"^TORCH_CPU\s*:?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)[1]
    assert Requirement(torch_cpu).specifier == SpecifierSet(f"=={_pins()['torch'][1]}")
