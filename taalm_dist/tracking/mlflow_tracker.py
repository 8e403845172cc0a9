"""MLflow tracking, best effort: a background thread sends; training never waits on the server.

Every call only enqueues. The worker talks to the server with a short timeout (``timeout_s``, also when
``$MLFLOW_HTTP_REQUEST_TIMEOUT`` says more) and no retries; the first failure prints one warning and turns
the tracker off (metrics.jsonl stays complete). The only waits are :meth:`MlflowTracker.wait_ready` (for the
run id a checkpoint records) and ``close``: a server that hangs costs ``timeout_s`` once — the first wait
that runs out turns the tracker off with the one warning, and later waits return at once.

A run ends with the status its trainer gives ``close`` (``FINISHED``, ``FAILED``, ``KILLED``), so a failed or
killed run does not stay "RUNNING" in the MLflow UI. Experiments are tagged as model development
(``mlflow.experimentKind``), so MLflow 3 opens them in its training view, not the GenAI one.
"""

from __future__ import annotations

import math
import os
import queue
import re
import sys
import threading
from pathlib import Path

from taalm_dist.tracking.jsonl import check_status

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3 shows an experiment without this tag in its GenAI view (traces, prompts); this project's runs are
model training: params, metrics and artifacts."""


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


def limit_http_timeout(timeout_s: float) -> None:
    """Make MLflow's HTTP timeout at most ``timeout_s`` (whole seconds, at least 1) and its retries 0 unless set.

    MLflow reads ``$MLFLOW_HTTP_REQUEST_TIMEOUT`` (an int, default 120 s) from the environment at every request,
    so a larger value there (or a value that is not an int) is replaced in this process: with 300 s a hanging
    server would hold every request for five minutes. A smaller value is kept.
    """
    limit = max(1, math.ceil(timeout_s))
    current = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    try:
        keep = current is not None and 0 < int(current) <= limit
    except ValueError:
        keep = False
    if not keep:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(limit)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


class MlflowTracker:
    """The :class:`taalm_dist.tracking.Tracker` protocol on MLflow (``run_id`` resumes a run).

    ``tags`` are set on the run (strings); ``timeout_s`` bounds every request (:func:`limit_http_timeout`) and
    the time a hanging server can cost the caller (module docstring).
    """

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None = None, timeout_s: float = 5.0,
                 tags: dict | None = None):
        limit_http_timeout(timeout_s)
        self.uri, self.experiment, self.run_name, self.timeout_s = uri, experiment, run_name, timeout_s
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.run_id = run_id
        self._ready = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._dead = False
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()

    def _give_up(self, why: str) -> None:
        """Turn the tracker off with the one warning it ever prints (the worker and the caller may race here)."""
        with self._lock:
            if self._dead:
                return
            self._dead = True
        print(f"taalm: warning: MLflow tracking at {self.uri} {why}; continuing with metrics.jsonl only",
              file=sys.stderr)

    def _warn(self, err: Exception) -> None:
        self._give_up(f"failed ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})")

    def _start(self):
        from mlflow.entities import RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        if self.run_id is None:
            self.run_id = client.create_run(self._experiment_id(client), run_name=self.run_name,
                                            tags=self.tags).info.run_id
        else:  # a resumed run: running again (it may have ended KILLED), with this invocation's tags
            client.update_run(self.run_id, status="RUNNING")
            if self.tags:
                client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
        return client

    def _experiment_id(self, client) -> str:
        """The experiment's id, created when missing; either way tagged :data:`EXPERIMENT_KIND` unless it has a
        kind already (a user's own choice stays)."""
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return client.create_experiment(self.experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                                                **self._artifacts())
            except Exception:  # noqa: BLE001 — another process may have created it meanwhile
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

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
            kind, payload = self._queue.get()
            if kind == "close":
                status = payload
                break
            if client is None or self._dead:
                continue
            try:
                self._send(client, kind, payload)
            except Exception as e:  # noqa: BLE001
                self._warn(e)
        if client is not None and self.run_id is not None:
            # Also after giving up (e.g. a start that ended after the caller stopped waiting): the run must not stay
            # RUNNING. Nobody waits on this once the tracker gave up (close returns at once).
            try:
                client.set_terminated(self.run_id, status=status)
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
        """The run id once the run exists; None when tracking is off.

        Without ``timeout`` (trainers, before they record the run id in a checkpoint) it waits at most
        ``timeout_s``; when that runs out the server is taken as hanging: the tracker turns off with its one
        warning, and every later call returns None at once — a hanging server costs ``timeout_s`` once, not at
        every checkpoint. An explicit ``timeout`` (e.g. 0 to poll) waits that long and changes nothing.
        """
        if self._dead:
            return None
        if timeout is not None:
            self._ready.wait(timeout)
        elif not self._ready.wait(self.timeout_s):
            self._give_up(f"did not answer within {self.timeout_s:g} s")
        return self.run_id if self._ready.is_set() and not self._dead else None

    def log_params(self, params: dict) -> None:
        self._queue.put(("params", params))

    def log_metrics(self, metrics: dict, step: int) -> None:
        import time

        self._queue.put(("metrics", (dict(metrics), step, int(time.time() * 1000))))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._queue.put(("artifact", (path, artifact_path)))

    def close(self, status: str = "FINISHED") -> None:
        """Send what is queued, then end the run as ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``, what
        MLflow's ``set_terminated`` receives). Waits for that at most ``3 × timeout_s`` (a healthy server
        draining a long queue), and not at all once the tracker has turned off (failed or hanging server)."""
        check_status(status)
        if self._closed:
            return
        self._closed = True
        self._queue.put(("close", status))
        if self._dead:
            return
        self._thread.join(timeout=max(self.timeout_s, 1.0) * 3)
        if self._thread.is_alive():
            self._give_up(f"did not take the run's last records within {max(self.timeout_s, 1.0) * 3:g} s (the run "
                          "there may be incomplete)")


def run_name_for(configured: str | None, fallback: str, method: str | None = None) -> str:
    """The MLflow run name: ``configured`` (``tracking.run_name``), else ``fallback`` (the run directory's name).

    With a ``method`` (``ckl run --method``) the name states it, so runs of one config with different methods
    are not all called the same: ``{method}`` in the name is replaced by it, and a name that does not contain
    it as a word gets ``-<method>`` appended (``smollm2-taalm`` → ``smollm2-taalm-finetune``; ``runs/ckl/oracle``
    stays ``oracle``). Without a method a ``{method}`` placeholder is dropped with the separator before it.
    """
    name = configured or fallback
    if method is None:
        return re.sub(r"[-_. ]*\{method\}", "", name).strip("-_. ") or fallback
    if "{method}" in name:
        return name.replace("{method}", method)
    if re.search(rf"(?<![A-Za-z0-9]){re.escape(method)}(?![A-Za-z0-9])", name):
        return name
    return f"{name}-{method}"


def open_run_trackers(out_dir: str | Path, tracking, run_id: str | None = None, *, tags: dict | None = None,
                      method: str | None = None):
    """``(MultiTracker, MlflowTracker or None)`` for a run directory: ``metrics.jsonl`` always, MLflow when
    ``tracking.mlflow`` (a :class:`taalm_dist.config.TrackingConfig`) and mlflow is installed.

    ``tags``: MLflow run tags (e.g. ``{"taalm.command": "ckl run"}``); ``method``: the method the run trains
    with — the run name states it (:func:`run_name_for`) and the tag ``taalm.method`` records it (unless ``tags``
    sets it). ``run_id`` continues that MLflow run (its name stays; the tags are set again).
    """
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
            run_tags = {**({"taalm.method": method} if method else {}), **(tags or {})}
            mlflow_tracker = MlflowTracker(uri, tracking.experiment, run_name_for(tracking.run_name, out.name, method),
                                           run_id=run_id, timeout_s=tracking.timeout_s, tags=run_tags)
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

    def close(self, status: str = "FINISHED") -> None:
        """Close every tracker; ``status`` (``FINISHED``, ``FAILED``, ``KILLED``) is how the run ended."""
        check_status(status)
        for t in self.trackers:
            t.close(status=status)
