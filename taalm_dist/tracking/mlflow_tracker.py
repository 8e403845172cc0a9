"""MLflow tracking, best effort: a background thread sends; training never waits on the server.

Every call only enqueues. The worker talks to the server with a short timeout and no retries; the
first failure prints one warning and turns the tracker off (metrics.jsonl stays complete). ``close``
waits at most ``timeout_s`` for the queue to drain.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path


def _flatten(d: dict) -> dict[str, str]:
    """MLflow params: dotted keys, values as strings of at most 500 characters."""
    from taalm_dist.config import flatten_dict

    return {k: str(v)[:500] for k, v in flatten_dict(d).items()}


def default_tracking_uri(out_dir: str | Path) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store beside the run directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str((Path(out_dir).resolve().parent / "mlflow.db"))


class MlflowTracker:
    """The :class:`taalm_dist.tracking.Tracker` protocol on MLflow (``run_id`` resumes a run)."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None = None, timeout_s: float = 5.0):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_s))))
        self.uri, self.experiment, self.run_name, self.timeout_s = uri, experiment, run_name, timeout_s
        self.run_id = run_id
        self._ready = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._dead = False
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()

    def _warn(self, err: Exception) -> None:
        if not self._dead:
            self._dead = True
            print(f"taalm: warning: MLflow tracking at {self.uri} failed ({type(err).__name__}: "
                  f"{str(err).splitlines()[0][:200]}); continuing with metrics.jsonl only", file=sys.stderr)

    def _start(self):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        if self.run_id is None:
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment, **self._artifacts())
            self.run_id = client.create_run(exp_id, run_name=self.run_name).info.run_id
        return client

    def _artifacts(self) -> dict:
        """A sqlite store keeps artifacts beside the database (``mlartifacts/``): MLflow's default is
        ``./mlruns`` in whatever directory the job was started from."""
        if not self.uri.startswith("sqlite:///"):
            return {}
        db = Path(self.uri[len("sqlite:///"):]).resolve()
        return {"artifact_location": (db.parent / "mlartifacts").as_uri()}

    def _work(self) -> None:
        try:
            client = self._start()
        except Exception as e:  # noqa: BLE001 — tracking is best effort by contract
            self._warn(e)
            client = None
        self._ready.set()
        while True:
            item = self._queue.get()
            if item is None:
                break
            if client is None or self._dead:
                continue
            kind, payload = item
            try:
                self._send(client, kind, payload)
            except Exception as e:  # noqa: BLE001
                self._warn(e)
        if client is not None and not self._dead:
            try:
                client.set_terminated(self.run_id)
            except Exception as e:  # noqa: BLE001
                self._warn(e)

    def _send(self, client, kind: str, payload) -> None:
        from mlflow.entities import Metric, Param

        if kind == "params":
            items = list(_flatten(payload).items())
            for i in range(0, len(items), 100):
                client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        elif kind == "metrics":
            metrics, step, ts = payload
            ms = [Metric(k.replace("/", "."), float(v), ts, step) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if ms:
                client.log_batch(self.run_id, metrics=ms)
        elif kind == "artifact":
            path, artifact_path = payload
            client.log_artifact(self.run_id, str(path), artifact_path)

    def wait_ready(self, timeout: float | None = None) -> str | None:
        """Block until the run exists (or failed); returns the run id."""
        self._ready.wait(self.timeout_s if timeout is None else timeout)
        return None if self._dead else self.run_id

    def log_params(self, params: dict) -> None:
        self._queue.put(("params", params))

    def log_metrics(self, metrics: dict, step: int) -> None:
        import time

        self._queue.put(("metrics", (dict(metrics), step, int(time.time() * 1000))))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._queue.put(("artifact", (path, artifact_path)))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=max(self.timeout_s, 1.0) * 3)


def open_run_trackers(out_dir: str | Path, tracking, run_id: str | None = None):
    """``(MultiTracker, MlflowTracker or None)`` for a run directory: ``metrics.jsonl`` always, MLflow when
    ``tracking.mlflow`` (a :class:`taalm_dist.config.TrackingConfig`) and mlflow is installed."""
    from taalm_dist.tracking.jsonl import JsonlLogger

    out = Path(out_dir)
    trackers, mlflow_tracker = [JsonlLogger(out / "metrics.jsonl")], None
    if tracking.mlflow:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            print("taalm: warning: mlflow is not installed; logging to metrics.jsonl only")
        else:
            uri = tracking.tracking_uri or default_tracking_uri(out)
            mlflow_tracker = MlflowTracker(uri, tracking.experiment, tracking.run_name or out.name, run_id=run_id,
                                           timeout_s=tracking.timeout_s)
            trackers.append(mlflow_tracker)
    return MultiTracker(*trackers), mlflow_tracker


class MultiTracker:
    """Fan out to several trackers (JSONL first: it is the source of truth)."""

    def __init__(self, *trackers):
        self.trackers = [t for t in trackers if t is not None]

    def log_params(self, params: dict) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: dict, step: int) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_artifact(self, path, artifact_path=None) -> None:
        for t in self.trackers:
            if hasattr(t, "log_artifact"):
                t.log_artifact(path, artifact_path)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
