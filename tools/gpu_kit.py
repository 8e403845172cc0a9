"""`make gpu-kit`: the offline kit the GPU check installs on a machine without network (`launch/gpu_check.sh`).

    python tools/gpu_kit.py [--out .gpu-kit] [--python 3.12] [--max-mib 60]

Assembles ``OUT`` (git-ignored) with the wheels that the GPU check needs and that a GPU machine with torch,
triton, transformers, numpy and pytest may lack, for CPython ``--python`` on manylinux x86-64, at the versions of
constraints.txt (the one list of versions):

- DeepSpeed, built here as a wheel without its compiled ops (``DS_BUILD_OPS=0``; the project's DeepSpeed config
  uses torch's Adam, so no op is JIT-compiled there either);
- its small dependencies (hjson, pydantic and pydantic-core, annotated-types, typing-inspection,
  typing-extensions, py-cpuinfo, msgpack, psutil, ninja, einops);
- peft at the project's pin (small; the code is tested with it).

No model weights: the check builds its models from shapes. ``OUT/MANIFEST.json`` lists each wheel with its
size and sha256, the target Python and what the kit expects the machine to have. The kit is written beside
``OUT`` and moved into place when whole; an existing ``OUT`` is replaced only if it is a kit (has a MANIFEST.json).
Refused (exit 1) when the wheels together exceed ``--max-mib``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lock_check import read_pins  # noqa: E402 — the lock's one reader

ROOT = Path(__file__).resolve().parents[1]
BUILT = ("deepspeed",)
"""Built here from its source distribution (no compiled ops)."""
DOWNLOADED = ("hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
              "py-cpuinfo", "msgpack", "psutil", "ninja", "einops", "peft")
"""Binary wheels for the target Python, from the package index."""
EXPECTED_THERE = ("torch", "triton", "transformers", "accelerate", "safetensors", "tokenizers", "huggingface-hub",
                  "numpy", "packaging", "pyyaml", "tqdm", "regex", "pytest")
"""What the kit does not carry: the GPU machine's own installation must provide these."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64", "linux_x86_64")


class KitError(Exception):
    """The kit cannot be made as asked (the message says why and what to do)."""


def _pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise KitError(f"`{' '.join(cmd)}` failed ({res.returncode}):\n{res.stderr[-3000:]}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pinned(names: tuple[str, ...], lock: Path) -> list[str]:
    """``name==version`` for each of ``names`` from the lock; a name the lock does not pin is refused."""
    pins = read_pins(lock)
    missing = [n for n in names if n not in pins]
    if missing:
        raise KitError(f"{lock} pins no version of {missing}: run `make lock` after installing them")
    return [f"{n}=={pins[n]}" for n in names]


def build_kit(out: Path, python: str = "3.12", max_mib: float = 60, lock: Path = ROOT / "constraints.txt") -> dict:
    """Assemble the kit in ``out`` (module docstring) and return its manifest.

    Raises:
        KitError: a wheel cannot be built or downloaded, the kit is over ``max_mib``, or ``out`` exists and is
            not a kit.
    """
    if out.exists() and not (out / "MANIFEST.json").is_file():
        raise KitError(f"{out} exists and is not a GPU kit (no MANIFEST.json): move it away or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        wheels = Path(tmp) / "kit"
        wheels.mkdir()
        env = {**os.environ, "DS_BUILD_OPS": "0"}
        _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), *pinned(BUILT, lock), env=env)
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version",
             python, *platforms, "-d", str(wheels), *pinned(DOWNLOADED, lock))
        files = sorted(wheels.glob("*.whl"))
        size = sum(f.stat().st_size for f in files)
        manifest = {"python": python, "platform": "manylinux x86-64", "mib": round(size / 2**20, 2),
                    "max_mib": max_mib, "expected_on_the_machine": list(EXPECTED_THERE),
                    "wheels": [{"file": f.name, "bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files]}
        if size > max_mib * 2**20:
            raise KitError(f"the kit would be {size / 2**20:.1f} MiB, over the {max_mib:g} MiB limit (only 64 MiB "
                           f"travel to the GPU machine with the whole working tree): {[f.name for f in files]}")
        (wheels / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
        old = Path(tmp) / "old"
        if out.exists():
            out.rename(old)
        wheels.rename(out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_kit.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / ".gpu-kit", help="the kit's folder")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (X.Y)")
    p.add_argument("--max-mib", type=float, default=60, help="refuse a kit larger than this")
    args = p.parse_args(argv)
    try:
        m = build_kit(args.out, args.python, args.max_mib)
    except KitError as e:
        print(f"gpu-kit: {e}", file=sys.stderr)
        return 1
    print(f"gpu-kit: {args.out} holds {len(m['wheels'])} wheels for CPython {m['python']}, {m['mib']:.1f} MiB "
          f"(limit {m['max_mib']:g} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
