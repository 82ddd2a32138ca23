"""The tracking store and its one client per process.

Store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` unless
``MLFLOW_TRACKING_URI`` is set (e.g. a local ``mlflow server`` when several processes write); the
locations are decided in ``salt_exp.stores``. Every call goes through an explicit ``MlflowClient``
(one per tracking URI, reused), so nested runs and several runs per process never share MLflow's
hidden "active run" state.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from salt_exp.stores import artifact_root, default_tracking_uri, sqlite_path, tracking_uri

_CLIENTS: dict[str, MlflowClient] = {}
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def client() -> MlflowClient:
    """The client of the current tracking URI (re-read each call: workers and tests change it)."""
    uri = tracking_uri()
    if uri not in _CLIENTS:
        db = sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            if uri == default_tracking_uri():
                link_default_store(db)
        _CLIENTS[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return _CLIENTS[uri]


MLFLOW_DEFAULT_DB = Path("mlflow.db")  # what MLflow 3 opens when no tracking URI is set: sqlite:///mlflow.db


def link_default_store(db: Path) -> None:
    """``./mlflow.db`` -> ``mlruns/mlflow.db``: a bare ``mlflow ui`` or ``mlflow.search_runs()`` started in the
    project folder (MLflow's default store is ``sqlite:///mlflow.db``) then reads the project's store, while
    the store itself stays under mlruns/. SQLite resolves the link, so its journal sits beside the real file.
    Left alone when ``mlflow.db`` exists (a user's own store) or the folder is not writable."""
    if MLFLOW_DEFAULT_DB.exists() or MLFLOW_DEFAULT_DB.is_symlink():
        return
    try:
        MLFLOW_DEFAULT_DB.symlink_to(os.path.relpath(db.resolve(), Path.cwd()))
    except OSError:
        pass


def experiment_id(name: str) -> str:
    """Id of experiment ``name``, created on first use (artifacts under mlruns/artifacts for local stores)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(tracking_uri())
    location = (root / name.replace("/", "_")).resolve().as_uri() if root is not None else None
    try:  # a training workspace in the UI (MLflow 3 otherwise guesses GenAI for an empty experiment)
        return c.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: TRAINING_KIND})
    except MlflowException:  # created meanwhile by another process
        return c.get_experiment_by_name(name).experiment_id
