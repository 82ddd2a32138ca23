"""The run writer: one MLflow run's params, metrics by step, tags, artifacts and registry versions.

Writes are replay-safe where the contract needs it: params already logged are skipped (they are
immutable), a table artifact is replaced whole (MLflow's own ``log_table`` appends rows to an
existing file, which a resumed run would duplicate), and a registry version is created once per key.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from salt_exp.contract import DatasetRecord, RunStatus, Tag, TrialState, table_json
from salt_exp.errors import one_line
from salt_exp.faults import fault_point
from salt_exp.stores import tracking_uri
from salt_exp.tracking.git import git_state
from salt_exp.tracking.store import client, experiment_id


def context_tags() -> dict[str, str]:
    """The tags ``mlflow.start_run`` would add (user, source name and type) plus the project's git state:
    ``mlflow.source.git.commit`` a bare SHA, ``mlflow.source.git.dirty``, ``.branch`` (runs are created with
    ``MlflowClient.create_run``, which adds none of them)."""
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags

    tags = {k: str(v) for k, v in resolve_tags(ignore=[GitRunContext]).items()}  # MLflow's git view: sys.argv[0]'s
    g = git_state()
    tags.update({Tag.GIT_COMMIT: g.commit, Tag.GIT_DIRTY: str(g.dirty).lower()})
    if g.branch:
        tags[Tag.GIT_BRANCH] = g.branch
    if g.repo_url:
        tags[Tag.GIT_REPO_URL] = g.repo_url
    return tags


class RunTracker:
    """One MLflow run: params, metrics by step, artifacts, tags, registry versions."""

    def __init__(self, c: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = c, run_id
        self._monitor: Any = None

    @classmethod
    def start(cls, experiment: str, run_name: str, tags: Mapping[str, str],
              parent_run_id: str | None = None) -> RunTracker:
        c = client()
        all_tags = {**context_tags(), **tags}
        if parent_run_id:
            all_tags[Tag.PARENT_RUN] = parent_run_id
        run = c.create_run(experiment_id(experiment), run_name=run_name, tags=all_tags)
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

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """A table artifact in MLflow's format, replacing any earlier file (so a replay leaves one copy)."""
        self.log_text(json.dumps(table_json(columns), default=str), artifact_file)
        listed = json.loads(self.tags().get(Tag.LOGGED_ARTIFACTS, "[]"))
        entry = {"path": artifact_file, "type": "table"}  # what MLflow's UI reads to show the table
        if entry not in listed:
            self.set_tags({Tag.LOGGED_ARTIFACTS: json.dumps([*listed, entry])})

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def list_artifacts(self, folder: str | None = None) -> list[str]:
        """Paths directly under ``folder`` (the run root when None)."""
        return [f.path for f in self.client.list_artifacts(self.run_id, folder)]

    def download_artifacts(self, artifact_path: str, dst: Path) -> Path:
        """``artifact_path`` (a file or a folder) of this run, downloaded under ``dst``; the local path."""
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=artifact_path,
                                                        dst_path=str(dst), tracking_uri=self.client.tracking_uri))

    def delete_artifacts(self, artifact_path: str) -> str:
        """Remove ``artifact_path`` from the run's artifacts; "" when done, else why not (some stores refuse
        deletes, e.g. a server started with ``--no-serve-artifacts`` in front of a store it cannot reach)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(self.artifact_uri, tracking_uri=self.client.tracking_uri).delete_artifacts(
                artifact_path)
        except Exception as exc:  # noqa: BLE001 - best effort: a left-over folder costs space, not correctness
            return one_line(exc)
        return ""

    def delete_tags(self, keys: list[str]) -> None:
        present = self.tags()
        for key in keys:
            if key in present:
                self.client.delete_tag(self.run_id, key)

    def artifact_exists(self, artifact_path: str) -> bool:
        parent = str(Path(artifact_path).parent)
        listed = self.client.list_artifacts(self.run_id, None if parent == "." else parent)
        return any(f.path == artifact_path for f in listed)

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
        self.client.set_terminated(self.run_id, status=str(getattr(status, "value", status)))

    def close_parent(self, state: str, *, started: float, status: str, failure: str = "") -> None:
        """End a parent run (trial or cv): its state tag, the wall time added up over attempts, the failure (a
        COMPLETE run drops an earlier attempt's: a rerun that finished it leaves no stale reason on it)."""
        held = self.tags()
        previous = float(held.get(Tag.DURATION_S, 0) or 0)
        tags = {Tag.STATUS: str(state), Tag.DURATION_S: f"{previous + time.time() - started:.1f}"}
        if failure:
            tags[Tag.FAILURE] = failure
        self.set_tags(tags)
        if state == TrialState.COMPLETE and not failure and Tag.FAILURE in held:
            self.client.delete_tag(self.run_id, Tag.FAILURE)
        self.end(status)

    def log_datasets(self, records: list[DatasetRecord]) -> None:
        """Dataset inputs of the run, each with its context (train / validation)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [DatasetInput(Dataset(name=r.name, digest=r.digest, source_type="local",
                                       source=json.dumps({"uri": r.source}), profile=json.dumps(r.profile)),
                               [InputTag(MLFLOW_DATASET_CONTEXT, r.context)]) for r in records]
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except MlflowException:
                # the store creates a dataset row per (experiment, name, digest) by check-then-insert: two workers
                # starting fold runs on the same tiles at once collide on it; the retry finds the row and links it
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    @contextmanager
    def closing_parent(self, *, pruned: tuple[type[BaseException], ...] = (),
                       on_pruned: Callable[[], None] | None = None) -> Iterator[None]:
        """End this parent run (trial or cv) by how the block ends, re-raising what ended it: COMPLETE /
        FINISHED; ``pruned`` exceptions PRUNED / KILLED (``on_pruned`` first); Ctrl-C (or SIGTERM turned into
        one) INTERRUPTED / KILLED; any other error FAIL / FAILED with its one-line reason."""
        started = time.time()
        try:
            yield
        except pruned as exc:
            if on_pruned is not None:
                on_pruned()
            self.close_parent(TrialState.PRUNED, started=started, status=RunStatus.KILLED, failure=str(exc))
            raise
        except KeyboardInterrupt:
            self.close_parent(TrialState.INTERRUPTED, started=started, status=RunStatus.KILLED)
            raise
        except Exception as exc:
            self.close_parent(TrialState.FAIL, started=started, status=RunStatus.FAILED, failure=one_line(exc))
            raise
        self.close_parent(TrialState.COMPLETE, started=started, status=RunStatus.FINISHED)

    def register_version(self, model_name: str, artifact_path: str, tags: Mapping[str, Any],
                         key_tag: str = "cycle", model_id: str | None = None) -> str:
        """Register a logged model of this run (``model_id``; source ``models:/<model_id>``) or, without one,
        ``artifact_path`` of this run as a version of ``model_name``, exactly once.

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
        source = f"models:/{model_id}" if model_id else f"{self.artifact_uri}/{artifact_path}"
        fault_point("registry.before_create_version")
        version = self.client.create_model_version(model_name, source=source, run_id=self.run_id,
                                                   tags={k: str(v) for k, v in tags.items()}, model_id=model_id)
        fault_point("registry.after_create_version")
        return str(version.version)


def temp_dir() -> tempfile.TemporaryDirectory:
    """A scratch folder for files that are uploaded and then dropped."""
    return tempfile.TemporaryDirectory(prefix="salt-exp-")

