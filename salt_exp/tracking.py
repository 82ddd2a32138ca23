"""MLflow at the edge: the only module that imports mlflow.

Store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``, unless
``MLFLOW_TRACKING_URI`` is set (e.g. a local ``mlflow server`` when several processes
write). Everything goes through an explicit ``MlflowClient`` bound to one run, so
nested runs and several runs per process never share hidden global state.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

STORE_DIR = Path("mlruns")


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the project's SQLite store under mlruns/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def client() -> MlflowClient:
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c: MlflowClient, name: str) -> str:
    """Id of experiment ``name``, created on first use (artifacts under mlruns/artifacts for local stores)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (STORE_DIR / "artifacts" / name.replace("/", "_")).resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        return c.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    """HEAD commit of the working tree, with ``-dirty`` when it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


class RunTracker:
    """One MLflow run: params, metrics by step, artifacts, tags, registry versions."""

    def __init__(self, c: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = c, run_id
        self._monitor: Any = None

    @classmethod
    def start(cls, experiment: str, run_name: str, tags: Mapping[str, str],
              parent_run_id: str | None = None) -> RunTracker:
        c = client()
        all_tags = {"mlflow.source.git.commit": git_commit(), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = c.create_run(experiment_id(c, experiment), run_name=run_name, tags=all_tags)
        return cls(c, run.info.run_id)

    @classmethod
    def attach(cls, run_id: str) -> RunTracker:
        """Log into an existing run (finished or not) without changing its status: analyses added later."""
        return cls(client(), run_id)

    @classmethod
    def resume(cls, run_id: str) -> RunTracker:
        c = client()
        c.update_run(run_id, status="RUNNING")
        return cls(c, run_id)

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params (values cut to MLflow's 6000 characters), in batches of 100."""
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        logged = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in logged]  # params are immutable: resume must not re-log
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def metric_steps(self, key: str) -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(self.run_id, key))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, obj: Any, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=2, default=str), artifact_file)

    def log_table(self, data: Any, artifact_file: str) -> None:
        self.client.log_table(self.run_id, data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def artifact_exists(self, artifact_path: str) -> bool:
        parent = str(Path(artifact_path).parent)
        listed = self.client.list_artifacts(self.run_id, None if parent == "." else parent)
        return any(f.path == artifact_path for f in listed)

    def download_artifact(self, artifact_path: str, dst: str | Path) -> Path:
        return Path(mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=artifact_path,
                                                        dst_path=str(dst), tracking_uri=tracking_uri()))

    def start_system_metrics(self, interval: float = 10.0) -> None:
        """CPU/memory/disk (and GPU when nvml is present) as ``system/*`` metrics, resuming their steps."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, resume_logging=True,
                                                 tracking_uri=tracking_uri())
            self._monitor.start()
        except Exception:  # noqa: BLE001 - monitoring is best effort, never a reason to fail a run
            self._monitor = None

    def end(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self.client.set_terminated(self.run_id, status=status)

    def register_version(self, model_name: str, artifact_path: str, tags: Mapping[str, Any],
                         key_tag: str = "cycle") -> str:
        """Register ``artifact_path`` of this run as a version of ``model_name``, exactly once.

        A version of this run whose ``key_tag`` matches is returned instead of creating a second
        one, so a resumed run never registers a snapshot twice.
        """
        try:
            self.client.create_registered_model(model_name)
        except MlflowException:
            pass  # already exists
        for v in self.client.search_model_versions(f"name='{model_name}' and run_id='{self.run_id}'"):
            if v.tags.get(key_tag) == str(tags.get(key_tag)):
                return str(v.version)
        source = f"{self.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(model_name, source=source, run_id=self.run_id,
                                                   tags={k: str(v) for k, v in tags.items()})
        return str(version.version)


def find_runs(experiment: str, filter_string: str = "", max_results: int = 1000) -> list[Any]:
    """Runs of an experiment matching an MLflow filter, newest first; [] when the experiment is absent."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=max_results,
                         order_by=["attributes.start_time DESC"])


# ---------------------------------------------------------------- registry reads (ensemble builder)


def registry_versions(model_name: str) -> list[dict[str, Any]]:
    """Every version of a registered model as plain dicts: version, run_id, source, tags; [] when absent."""
    c = client()
    try:
        found = c.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return []
    return [_version_dict(model_name, v) for v in found]


def _version_dict(model_name: str, v: Any) -> dict[str, Any]:
    return {"name": model_name, "version": str(v.version), "run_id": v.run_id, "source": v.source, "tags": dict(v.tags),
            "created_ms": int(v.creation_timestamp or 0)}


def download_run_artifact(run_id: str, artifact_path: str, dst: str | Path) -> Path:
    """Download one artifact of a run into ``dst`` and return its local path."""
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst),
                                                    tracking_uri=tracking_uri()))


def set_model_alias(model_name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(model_name, alias, version)


def alias_version(model_name: str, alias: str) -> dict[str, Any] | None:
    """The version ``alias`` points at (as in registry_versions), or None when the model or alias is absent."""
    try:
        v = client().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return _version_dict(model_name, v)


# ---------------------------------------------------------------- study support (parent runs, a local server)


def run_metrics(run_id: str) -> dict[str, float]:
    """Latest value of each metric of a run."""
    return dict(client().get_run(run_id).data.metrics)


def ensure_experiment(name: str) -> str:
    """Create experiment ``name`` now (so its artifact location is fixed before any server starts)."""
    return experiment_id(client(), name)


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServer:
    """``mlflow server`` on 127.0.0.1 over a SQLite store, so that several processes write through one.

    ``with LocalServer(db_uri, artifact_root) as uri:`` yields ``http://127.0.0.1:<port>``; the server
    runs in its own process group and is stopped (the whole group) on exit.
    """

    def __init__(self, backend_uri: str, artifact_root: Path, log_path: Path, timeout: float = 120.0) -> None:
        self.backend_uri, self.artifact_root, self.log_path, self.timeout = backend_uri, artifact_root, log_path, timeout
        self.proc: subprocess.Popen | None = None
        self.uri = ""

    def __enter__(self) -> str:
        import sys

        port = free_port()
        self.uri = f"http://127.0.0.1:{port}"
        root = self.artifact_root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", self.backend_uri, "--default-artifact-root", root.as_uri(),
               "--artifacts-destination", root.as_uri()]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self.uri

    def _wait_ready(self) -> None:
        import urllib.request

        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:  # noqa: S310 - local URL
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {self.timeout:.0f}s; see {self.log_path}")

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def run_tags(run_id: str) -> dict[str, str]:
    return dict(client().get_run(run_id).data.tags)


def run_summary(run_id: str) -> dict[str, Any]:
    """tags, params, metrics, status, start/end times (ms) and experiment name of a run; SaltError if unknown."""
    from salt_exp.errors import SaltError

    c = client()
    try:
        run = c.get_run(run_id)
    except MlflowException as exc:
        raise SaltError(f"--run {run_id}: no such MLflow run in {tracking_uri()}") from exc
    return {"run_id": run_id, "tags": dict(run.data.tags), "params": dict(run.data.params),
            "metrics": dict(run.data.metrics), "status": run.info.status, "start_ms": run.info.start_time or 0,
            "end_ms": run.info.end_time or 0, "experiment": c.get_experiment(run.info.experiment_id).name}


def artifact_paths(run_id: str, folder: str | None = None) -> list[str]:
    """Paths of the files directly under ``folder`` of a run's artifacts."""
    return [f.path for f in client().list_artifacts(run_id, folder) if not f.is_dir]
