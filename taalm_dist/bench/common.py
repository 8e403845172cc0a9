"""Shared pieces of the benchmarks: a description of the machine and one case in a fresh process."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Callable

import torch


def machine_info() -> dict:
    """What the numbers were measured on, without the hostname.

    Returns:
        ``{"platform", "python", "cpu", "cpu_count", "torch_threads", "ram_gb", "torch", "cuda", "gpu",
        "date"}``; ``gpu`` is the name of CUDA device 0 or None, ``date`` is UTC ISO-8601.
    """
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(_meminfo_kib("MemTotal") / 2**20, 1) if os.path.exists("/proc/meminfo") else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def current_rss_mb() -> float:
    """Resident set size of this process now, in MB (2**20 bytes), from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB: since the last :func:`reset_peak_rss` where Linux allows it
    (``VmHWM`` of /proc/self/status), else over the process's life (``ru_maxrss``, KiB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ≥ 4.0: ``5`` into /proc/self/clear_refs), so a
    peak measured afterwards is not an earlier spike (imports, loading). Returns whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of this process over a baseline taken at construction, in MB (2**20 bytes).

    CPU: peak RSS minus the RSS at construction, the peak being reset at construction where Linux allows it
    (else an earlier spike, e.g. from imports, can hide the part of interest: measure it first). CUDA:
    ``max_memory_allocated`` (reset at construction) minus the allocated at construction."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.reset = reset_peak_rss()
            self.base = current_rss_mb()

    def peak(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        return max(0.0, peak_rss_mb() - self.base)


def best_time(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` after one warm-up call (CUDA synchronised)."""
    fn()
    if cuda:
        torch.cuda.synchronize()
    return interleaved_best_times({"fn": fn}, repeats, cuda)["fn"]


def interleaved_best_times(fns: dict[str, Callable[[], object]], repeats: int, cuda: bool) -> dict[str, float]:
    """Seconds of the fastest of ``repeats`` calls of each of ``fns``, the calls alternating (a, b, a, b, ...) so a
    slow spell of the machine touches each alike; the caller has made each one's warm-up call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: min(v) for name, v in times.items()}


def run_case_subprocess(module: str, case: dict, timeout_s: float) -> dict:
    """Run ``python -m <module> --case '<json>'`` in a fresh process and return the JSON it prints.

    Args:
        module: a module whose ``--case`` entry point measures one case and prints one JSON line last.
        case: the case, JSON-serialisable.
        timeout_s: wall-clock limit in seconds.

    Raises:
        RuntimeError: the process failed, timed out or printed no JSON; the message has its stderr tail.
    """
    cmd = [sys.executable, "-m", module, "--case", json.dumps(case)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{module} case {case} timed out after {timeout_s} s; stderr tail:\n{_tail(e.stderr)}")
    if out.returncode != 0:
        raise RuntimeError(f"{module} case {case} failed with exit code {out.returncode}; stderr tail:\n{_tail(out.stderr)}")
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(
            f"{module} case {case} printed no JSON line; stdout tail:\n{_tail(out.stdout)}\nstderr tail:\n{_tail(out.stderr)}"
        ) from None


def run_case_or_failure(module: str, case: dict, timeout_s: float, keep: tuple[str, ...] | None = None) -> dict:
    """:func:`run_case_subprocess`, but a case that fails (e.g. out of memory) is returned as its ``keep`` fields (all
    by default) plus ``failed`` (the error's tail), so the other cases of a benchmark still run."""
    try:
        return run_case_subprocess(module, case, timeout_s)
    except RuntimeError as e:
        return {k: case[k] for k in (keep or case)} | {"failed": str(e)[-600:]}


def _tail(text, n: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]
