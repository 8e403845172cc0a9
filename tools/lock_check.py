"""Does constraints.txt agree with the requirements of the torch wheels that GPU machines install?

The lock is frozen on a CPU machine, whose torch wheel (the local ``+cpu`` build) requires no triton and no CUDA
libraries. PyPI's Linux x86-64 wheel of the same version -- the CUDA build that ``make install`` and the
Dockerfile get on a GPU node -- pins some of them exactly (torch 2.13.0: ``triton==3.7.1``). A lock that pins
another version cannot be installed there (pip: ResolutionImpossible). This module reads that wheel's
``Requires-Dist`` from PyPI without downloading the wheel (HTTP range requests on the zip's central directory
and its METADATA member, a few hundred kB) and lists every pin of the lock that one of them does not admit.

Used by ``make lock`` (a lock that disagrees is refused) and by tests/unit/test_install_pins.py.

    python tools/lock_check.py [constraints.txt]     # exit 0: agrees; 1: each conflict printed; 2: unreachable
"""

from __future__ import annotations

import io
import json
import re
import sys
import urllib.error
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SIMPLE_INDEX = "https://pypi.org/simple"
# The GPU machines the lock must install on: Linux x86-64, the lock's CPython (3.11) and the CUDA image's and the
# lent GPU machine's (3.12).
PYTHONS = ("3.11", "3.12")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
TIMEOUT_S = 60


class HTTPRangeFile(io.RawIOBase):
    """A read-only, seekable file over HTTP range requests: what ``zipfile`` needs to read one member of a
    remote archive without fetching the rest. Each ``read(n)`` is one request of ``n`` bytes."""

    def __init__(self, url: str):
        super().__init__()
        self.url, self.pos = url, 0
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=TIMEOUT_S) as r:
            self.size = int(r.headers["Content-Length"])
            if r.headers.get("Accept-Ranges", "").lower() != "bytes":
                raise OSError(f"{url}: the server does not serve byte ranges")

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end - 1}"})
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            data = r.read()
        if len(data) != end - self.pos:  # a server that ignored the range sent the whole file
            raise OSError(f"{self.url}: asked for {end - self.pos} bytes at {self.pos}, got {len(data)}")
        self.pos = end
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def wheel_url(name: str, version: str, python: str, platform: str = "manylinux_2_28_x86_64",
              index: str = SIMPLE_INDEX) -> str:
    """The download URL of ``name``'s wheel for CPython ``python`` ("3.12") on ``platform``, from the index's
    JSON simple API (PEP 691). Raises LookupError naming the wheel when the index has none."""
    tag = "cp" + python.replace(".", "")
    req = urllib.request.Request(f"{index}/{canonicalize_name(name)}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
        files = json.load(r)["files"]
    prefix = f"{name}-{version}-{tag}-{tag}-"
    for f in files:
        if f["filename"].startswith(prefix) and platform in f["filename"]:
            return f["url"]
    raise LookupError(f"{index}: no wheel {prefix}*{platform}*.whl")


def wheel_requirements(url: str) -> list[Requirement]:
    """The ``Requires-Dist`` lines of the wheel at ``url`` (its ``*.dist-info/METADATA``)."""
    with zipfile.ZipFile(io.BufferedReader(HTTPRangeFile(url), buffer_size=1 << 16)) as z:
        meta = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(meta) != 1:
            raise OSError(f"{url}: expected one *.dist-info/METADATA, found {meta}")
        text = z.read(meta[0]).decode()
    return [Requirement(r) for r in Parser().parsestr(text, headersonly=True).get_all("Requires-Dist") or []]


def read_pins(path: Path) -> dict[str, Version]:
    """canonical name -> pinned version of a lock file of ``name==version`` lines (comments allowed)."""
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            m = PIN.match(line)
            if not m:
                raise ValueError(f"{path}:{n}: {line!r} is not an exact `name==version` pin")
            pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def conflicts(pins: dict[str, Version], requirements: list[Requirement], python: str) -> list[str]:
    """Each requirement that applies on Linux x86-64 under CPython ``python`` (no extras) and that the lock's pin
    of the same distribution does not satisfy, as a readable line. Unpinned distributions (the CUDA libraries)
    are not the lock's business."""
    env = {"platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64",
           "os_name": "posix", "python_version": python, "python_full_version": f"{python}.0",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    out = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is not None and not req.specifier.contains(pinned, prereleases=True):
            out.append(f"{req.name}=={pinned} (lock) but the wheel requires {req}")
    return out


def check_lock(lock: Path = ROOT / "constraints.txt", pythons: tuple[str, ...] = PYTHONS) -> list[str]:
    """Every conflict between ``lock`` and the Linux x86-64 wheels of its pinned torch, one line each, naming
    the wheel. Empty: the lock installs on GPU machines as it does here."""
    pins = read_pins(lock)
    torch = pins.get("torch")
    if torch is None:
        raise ValueError(f"{lock}: no torch pin")
    out = []
    for python in pythons:
        url = wheel_url("torch", str(torch), python)
        out += [f"{url.rsplit('/', 1)[-1]}: {c}" for c in conflicts(pins, wheel_requirements(url), python)]
    return out


def main(argv: list[str]) -> int:
    lock = Path(argv[0]) if argv else ROOT / "constraints.txt"
    try:
        found = check_lock(lock)
    except (OSError, urllib.error.URLError, LookupError) as e:
        print(f"lock_check: could not read torch's wheel metadata from {SIMPLE_INDEX}: {e}", file=sys.stderr)
        return 2
    for line in found:
        print(f"{lock}: {line}", file=sys.stderr)
    if found:
        print("lock_check: install the versions torch requires into .venv, then `make lock` again", file=sys.stderr)
        return 1
    print(f"lock_check: {lock} agrees with torch's Linux x86-64 wheels (CPython {', '.join(PYTHONS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
