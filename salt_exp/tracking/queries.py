"""Reads of the tracking store that return the contract's records, and cached artifact downloads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from salt_exp.contract import RunSummary
from salt_exp.errors import SaltError
from salt_exp.stores import tracking_uri
from salt_exp.tracking.store import client


def _summary(run: Any, experiment: str) -> RunSummary:
    return RunSummary(run_id=run.info.run_id, experiment=experiment, status=run.info.status,
                      start_ms=run.info.start_time or 0, end_ms=run.info.end_time or 0, tags=dict(run.data.tags),
                      params=dict(run.data.params), metrics=dict(run.data.metrics))


def find_runs(experiment: str, filter_string: str = "", max_results: int = 1000) -> list[RunSummary]:
    """Runs of an experiment matching an MLflow filter, newest first; [] when the experiment is absent."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=max_results,
                         order_by=["attributes.start_time DESC"])
    return [_summary(r, experiment) for r in runs]


def find_runs_in_studies(filter_string: str = "", max_results: int = 100) -> list[RunSummary]:
    """Runs of every ``salt/*`` experiment matching an MLflow filter, newest first."""
    c = client()
    exps = {e.experiment_id: e.name for e in c.search_experiments() if e.name.startswith("salt/")}
    if not exps:
        return []
    runs = c.search_runs(list(exps), filter_string=filter_string, max_results=max_results,
                         order_by=["attributes.start_time DESC"])
    return [_summary(r, exps[r.info.experiment_id]) for r in runs]


def run_summary(run_id: str) -> RunSummary:
    """One run by id; SaltError naming the store when there is no such run."""
    c = client()
    try:
        run = c.get_run(run_id)
    except MlflowException as exc:
        raise SaltError(f"--run {run_id}: no such MLflow run in {tracking_uri()}") from exc
    return _summary(run, c.get_experiment(run.info.experiment_id).name)


def artifact_paths(run_id: str, folder: str | None = None) -> list[str]:
    """Paths of the files directly under ``folder`` of a run's artifacts."""
    return [f.path for f in client().list_artifacts(run_id, folder) if not f.is_dir]


def fetch_artifact(run_id: str, artifact_path: str, cache: Path) -> Path:
    """A run's artifact as a local file under ``cache/<run_id>/``, downloaded on first use only.

    Artifacts of a run never change once written, so the cache is keyed by run id and path alone.
    """
    local = cache / run_id / artifact_path
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=local.parent, prefix=".download-") as tmp:  # a cut download is no hit
            got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp,
                                                      tracking_uri=tracking_uri())
            os.replace(got, local)
    return local
