"""One run's lifecycle, the same for every program: runtime → run directory → resume checks → trackers → stop
signals → checkpoints → close.

A program (``meta-train``, ``ckl run``, ``learn``) holds one :class:`RunSession` and calls, in order::

    rt = session.start(cfg.engine, theta=cfg.theta.model)          # process group, device; models refused early
    session.open(out_dir, overwrite=..., resume=..., settings=..., data_sha256=..., defaults=...)
    with session.building():                                       # a run that fails to start leaves nothing
        ...build the models, load session.resume_from if set...
    session.open_trackers(cfg, metrics_step=..., params={...})     # config.yaml, metrics.jsonl, MLflow (rank 0)
    with session.stop_signals(then="..."):                         # SIGTERM/SIGINT/stop file become a request
        ... train; session.checkpoint(step, write, state, keep) ...
        if session.stop_requested(): session.stop(message)         # every rank together; raises Preempted
    session.close(status)                                          # trackers, the directory's lock, process group

Every rank calls every method (rank 0 alone writes files and talks to the trackers).
"""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path
from typing import Callable

from taalm_dist.config import save_config, to_dict
from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine import distributed as D
from taalm_dist.engine.preemption import Preempted, StopSignals, report_stopped
from taalm_dist.engine.run_dir import (RunDir, directory_identity, is_same_directory, open_run_dir,
                                      truncate_metrics)
from taalm_dist.engine.runtime import Runtime
from taalm_dist.errors import TrainingError
from taalm_dist.tracking import MultiTracker, NullLogger, open_run_trackers


class RunSession:
    """The lifecycle of one run of ``command`` (``"meta-train"``, ``"ckl run"``, ``"learn"``); see the module
    docstring. Attributes appear as the steps run: ``rt``, ``run_dir``, ``out``, ``log``, ``mlflow``, ``signals``."""

    def __init__(self, command: str):
        self.command = command
        self.rt: Runtime | None = None
        self.run_dir: RunDir | None = None
        self.log = NullLogger()
        """The run's trackers (metrics.jsonl + MLflow) on rank 0; on other ranks a tracker that drops everything."""
        self.mlflow = None
        """The MLflow tracker on rank 0 when MLflow is on, else None."""
        self.signals = StopSignals()

    # ------------------------------------------------------------------------------------- start
    def start(self, engine, **models) -> Runtime:
        """The runtime of ``engine`` (an :class:`~taalm_dist.config.EngineConfig`), after refusing model settings
        it cannot run (``models``: name → ModelSourceConfig)."""
        self.rt = Runtime.start(engine, self.command)
        self.rt.check_models(**models)
        return self.rt

    def open(self, out_dir: str | Path, **checks) -> RunDir:
        """Lock and check the run directory (:func:`~taalm_dist.engine.run_dir.open_run_dir`; ``checks``: its
        keyword arguments — overwrite, resume, settings, data_sha256, defaults, legacy_hashes)."""
        self.run_dir = open_run_dir(out_dir, self.command, **checks)
        return self.run_dir

    @property
    def out(self) -> Path:
        """The run directory."""
        return self.run_dir.path

    @property
    def resume_from(self) -> Path | None:
        """The checkpoint to resume from, or None for a fresh start."""
        return self.run_dir.resume_from

    @property
    def resume_state(self) -> dict:
        """That checkpoint's ``trainer_state.json`` (empty for a fresh start)."""
        return self.run_dir.resume_state

    @contextlib.contextmanager
    def building(self):
        """Around building the run (models, checkpoint loading): on any error the directory is removed again when this
        run created it, so a run that could not start leaves nothing to resume or to refuse."""
        try:
            yield
        except BaseException:
            self.run_dir.discard_if_fresh()
            raise

    def open_trackers(self, cfg, *, metrics_step: int, params: dict | None = None, method: str | None = None) -> bool:
        """Drop ``metrics.jsonl`` rows after ``metrics_step`` (a resumed run's checkpoint; -1 when fresh: all), then on
        rank 0 write ``config.yaml`` and open the trackers (continuing the checkpoint's MLflow run), logging the
        config and ``params`` for a new tracked run. Returns True on rank 0 for a new tracked run (the caller may log
        more at step 0), else False."""
        truncate_metrics(self.out, metrics_step if self.resume_from is not None else -1)
        self.log = MultiTracker()
        if not D.is_main():
            return False
        run_id = self.resume_state.get("mlflow_run_id")
        save_config(cfg, self.out / "config.yaml")
        tags = {"taalm.command": self.command, **({"taalm.method": method} if method else {})}
        recorded = self.resume_state.get("run_dir")
        if run_id is not None and recorded is not None and not is_same_directory(recorded, self.out):
            print(f"taalm: {self.out} is a copy of the run directory {recorded['path']}: it continues in a new MLflow "
                  f"run (tag taalm.copied_from_run={run_id}); the original's run is left as it is", flush=True)
            tags["taalm.copied_from_run"], run_id = run_id, None
        self.log, self.mlflow = open_run_trackers(self.out, cfg.tracking, run_id, tags=tags, method=method)
        if run_id is None:
            self.log.log_params({**to_dict(cfg), **(params or {})})
        return run_id is None

    # ------------------------------------------------------------------------------- stop signals
    def stop_signals(self, then: str) -> StopSignals:
        """The stop-signal handlers while a run trains (``with session.stop_signals(...)``); rank 0 announces a signal
        with ``then`` (what the run does before stopping)."""
        self.signals = StopSignals(announce=D.is_main(), then=then)
        return self.signals

    def stop_requested(self) -> bool:
        """Whether any rank received a stop request (one all-reduce under several processes)."""
        asked = self.signals.requested is not None
        return D.any_rank(asked) if self.rt is not None and self.rt.distributed else asked

    def stop(self, message: str):
        """Stop every rank: rank 0 answers in ``$TAALM_STOP_FILE``; raises :class:`Preempted` with ``message``."""
        if D.is_main():
            report_stopped(message)
        raise Preempted(message)

    # -------------------------------------------------------------------------------- checkpoints
    def checkpoint(self, step: int, write: Callable[[Path], None], state: dict, keep: int,
                   rng: random.Random | None = None) -> Path:
        """An atomic checkpoint ``checkpoints/step-<step>`` (:mod:`taalm_dist.engine.checkpoint`): ``write(tmp)`` writes
        the models' part, then every RNG (and ``rng``), then ``state`` with the MLflow run id; returns its path."""
        tmp = ckpt.begin(self.out, step)
        try:
            write(tmp)
            ckpt.save_rng(tmp, rng)
            state = {**state, "mlflow_run_id": self.mlflow.wait_ready() if self.mlflow else None,
                     "run_dir": directory_identity(self.out)}
            return ckpt.commit(self.out, tmp, step, state, keep)
        except (OSError, RuntimeError) as e:
            full = ckpt.disk_full(e, self.out)
            if full is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the half-written save; the complete ones are untouched
            raise TrainingError(f"no space left on the disk of {self.out} while writing checkpoint step {step} "
                                f"({full}); the earlier complete checkpoints are intact: free space, then run the "
                                "same command with --resume auto") from None

    # ------------------------------------------------------------------------------------- close
    def close(self, status: str = "FINISHED") -> None:
        """Close the trackers with ``status`` (FINISHED, FAILED or KILLED; MLflow waits a bounded time for its
        queue), release the run directory and leave the process group (together only after a finished run)."""
        self.log.close(status=status)
        if self.run_dir is not None:
            self.run_dir.release()
        if self.rt is not None:
            self.rt.shutdown(together=status == "FINISHED")


class SessionProgram:
    """Base of the programs: the run's :class:`RunSession` (``self.session``, made by the subclass) and its parts under
    the names the programs use, plus ``cleanup`` (the contract of :func:`~taalm_dist.engine.preemption.run_to_end`)."""

    session: RunSession

    rt = property(lambda self: self.session.rt, doc="The runtime (process group, device).")
    run_dir = property(lambda self: self.session.run_dir, doc="The opened run directory.")
    out = property(lambda self: self.session.out, doc="The run directory's path.")
    log = property(lambda self: self.session.log, doc="The run's trackers (rank 0; elsewhere they drop everything).")
    mlflow = property(lambda self: self.session.mlflow, doc="The MLflow tracker (rank 0, MLflow on) or None.")
    signals = property(lambda self: self.session.signals, doc="The stop-signal handlers of the run.")
    distributed = property(lambda self: self.rt.distributed, doc="Whether the run has a process group (DeepSpeed).")
    world = property(lambda self: self.rt.world, doc="The number of processes (1 without a process group).")
    rank = property(lambda self: self.rt.rank, doc="This process's rank (0 without a process group).")

    def cleanup(self, status: str = "FINISHED") -> None:
        """Close the run with ``status`` (:meth:`RunSession.close`)."""
        self.session.close(status)
