"""constraints.txt (the lock `make install` uses) vs the running environment and vs pyproject.toml's ranges.

Fails when the environment drifts from the lock (a package upgraded by hand, a lock not regenerated after an
install), when a pin falls outside a range that pyproject.toml promises to library users, and when the lock
cannot install beside the pinned torch's Linux CUDA wheel (tools/lock_check.py reads its requirements from PyPI)."""

import importlib.metadata
import importlib.util
import io
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


# ---------------------------------------------------------------- the lock on GPU machines (tools/lock_check.py)


def _lock_check():
    spec = importlib.util.spec_from_file_location("lock_check", ROOT / "tools" / "lock_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conflicts_apply_torchs_linux_markers_per_python():
    lc = _lock_check()
    reqs = [Requirement(r) for r in ['triton==3.7.1; platform_system == "Linux" and python_version < "3.12"',
                                     'pywin32==1.0; sys_platform == "win32"', "sympy>=1.13.3",
                                     'nvidia-nccl-cu13==2.29.7; platform_system == "Linux"',
                                     'opt-einsum>=3.3; extra == "opt-einsum"']]
    pins = {"triton": Version("3.9.0"), "pywin32": Version("2.0"), "sympy": Version("1.14.0"),
            "opt-einsum": Version("1.0")}
    assert lc.conflicts(pins, reqs, "3.11") == [
        'triton==3.9.0 (lock) but the wheel requires triton==3.7.1; platform_system == "Linux" and '
        'python_version < "3.12"']
    assert lc.conflicts(pins, reqs, "3.12") == []  # the marker excludes 3.12; Windows, extras, unpinned CUDA: not ours
    assert lc.conflicts({**pins, "triton": Version("3.7.1")}, reqs, "3.11") == []


def test_wheel_metadata_is_read_through_byte_ranges(tmp_path):
    """The reader on a local HTTP server: a wheel's METADATA from its central directory, without the whole file."""
    import functools
    import http.server
    import threading
    import zipfile

    lc = _lock_check()
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("demo/big.bin", bytes(range(256)) * 4096)  # 1 MiB the reader must not fetch
        z.writestr("demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
                   "Requires-Dist: triton==3.7.1; platform_system == \"Linux\"\nRequires-Dist: sympy>=1.13\n\n")
    served = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_head(self):  # byte ranges (http.server serves whole files only)
            rng = self.headers.get("Range")
            data = wheel.read_bytes()
            if self.command == "HEAD" or rng is None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                return io.BytesIO(b"" if self.command == "HEAD" else data)
            start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            served.append(end + 1 - start)
            self.send_response(206)
            self.send_header("Content-Length", str(end + 1 - start))
            self.end_headers()
            return io.BytesIO(data[start:end + 1])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reqs = lc.wheel_requirements(f"http://127.0.0.1:{server.server_address[1]}/{wheel.name}")
    finally:
        server.shutdown()
    assert [str(r) for r in reqs] == ['triton==3.7.1; platform_system == "Linux"', "sympy>=1.13"]
    assert served and sum(served) < wheel.stat().st_size / 4


def test_lock_installs_with_the_pinned_torchs_linux_cuda_wheel():
    """PyPI's Linux x86-64 torch wheel (the CUDA build GPU nodes get) requires exact versions of some locked
    distributions (triton); the CPU wheel frozen here does not, so only this check sees a disagreement."""
    found = _lock_check().check_lock(ROOT / "constraints.txt")
    assert not found, "\n".join(found)


def test_lock_check_refuses_a_triton_pin_torch_does_not_require(tmp_path):
    """The 2026-12-06 lock pinned triton 3.9.0 where torch 2.13.0's wheel requires 3.7.1: the check must say so."""
    name, pinned = _pins()["triton"]
    other = f"{pinned.major}.{pinned.minor + 2}.0"
    lock = tmp_path / "constraints.txt"
    lock.write_text((ROOT / "constraints.txt").read_text().replace(f"{name}=={pinned}\n", f"{name}=={other}\n"))
    found = _lock_check().check_lock(lock)
    assert len(found) == 2 and all(f"triton=={other} (lock) but the wheel requires triton==" in f for f in found), found
    assert any("-cp311-" in f for f in found) and any("-cp312-" in f for f in found)
