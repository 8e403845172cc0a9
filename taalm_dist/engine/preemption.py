"""Stop cleanly on SIGTERM / SIGINT (preemption, requeue, Ctrl-C).

A cluster scheduler sends SIGTERM before it preempts or requeues a job (SLURM: ``--signal``, Kubernetes:
pod deletion). While a trainer runs, :class:`StopSignals` turns SIGTERM and the first SIGINT into a request
that the trainer honours at its next safe point: meta-train after the φ update in progress (all ranks agree
through an all-reduce, so every rank writes the same checkpoint), then it exits with :data:`EXIT_PREEMPTED`;
``taalm learn`` and ``ckl run`` stop at once, keeping their last epoch checkpoint. A second SIGINT stops at
once (``KeyboardInterrupt``). ``--resume auto`` continues either run.

A launcher that cannot deliver a signal to the trainer processes alone (torchrun forwards SIGTERM to its workers
but kills them 30 s later) can ask for the same stop through a file: with ``TAALM_STOP_FILE=path`` in the
environment, the file appearing at ``path`` is a stop request, and after stopping rank 0 writes ``stopped: ...``
into it (launch/slurm/meta_train.sbatch requeues the job on that).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

EXIT_PREEMPTED = 75
"""Exit code of a run stopped by SIGTERM/SIGINT after writing its checkpoint (``EX_TEMPFAIL``: try again;
launch/slurm/meta_train.sbatch requeues the job on it)."""


class Preempted(Exception):
    """Raised by a trainer that stopped on a signal; the CLI exits with :data:`EXIT_PREEMPTED`."""

    def __init__(self, message: str):
        super().__init__(message)


STOP_FILE_ENV = "TAALM_STOP_FILE"
"""Environment variable naming a stop-request file (see the module docstring)."""


def _stop_file() -> Path | None:
    path = os.environ.get(STOP_FILE_ENV)
    return Path(path) if path else None


def report_stopped(message: str) -> None:
    """Rank 0, after stopping on a request: write ``stopped: message`` into ``$TAALM_STOP_FILE`` (when set), so the
    launcher knows the run stopped cleanly and can requeue it."""
    path = _stop_file()
    if path is not None:
        try:
            path.write_text(f"stopped: {message}\n")
        except OSError as e:
            print(f"taalm: warning: cannot write {path} ({e})", file=sys.stderr)


class StopSignals:
    """Record SIGTERM/SIGINT instead of dying, while installed (``with StopSignals() as stop: ... stop.requested``).

    Outside the main thread (where Python cannot install handlers) it records nothing and changes nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool = True, then: str = "finishing the step in progress, then writing a checkpoint"):
        self.signal: str | None = None
        self.announce, self.then = announce, then
        self._previous: dict = {}

    @property
    def requested(self) -> str | None:
        """What asked this process to stop (``SIGTERM``, ``SIGINT``, ``stop file <path>``), or None."""
        if self.signal is not None:
            return self.signal
        path = _stop_file()
        if path is not None and path.is_file():
            try:
                stale = path.read_text(errors="replace").startswith("stopped:")  # an earlier run's answer
            except OSError:
                stale = False
            if not stale:
                return f"stop file {path}"
        return None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal = self.signal or name
        if self.announce:
            print(f"taalm: {name} received: {self.then} and stopping (Ctrl-C again stops at once)", file=sys.stderr,
                  flush=True)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def run_to_end(trainer, run):
    """``trainer.setup()``, ``run()``, then ``trainer.cleanup(status)`` always — FINISHED, KILLED after a signal or
    Ctrl-C, FAILED after any other error (the status MLflow shows). Returns what ``run`` returned."""
    status = "FAILED"
    try:
        trainer.setup()
        result = run()
        status = "FINISHED"
    except (Preempted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        trainer.cleanup(status)
    return result
