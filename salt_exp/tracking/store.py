"""The tracking store and its one client per process.

Store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` unless
``MLFLOW_TRACKING_URI`` is set (e.g. a local ``mlflow server`` when several processes write); the
locations are decided in ``salt_exp.stores``. Every call goes through an explicit ``MlflowClient``
(one per tracking URI, reused), so nested runs and several runs per process never share MLflow's
hidden "active run" state.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from salt_exp.stores import artifact_root, sqlite_path, tracking_uri

_CLIENTS: dict[str, MlflowClient] = {}


def client() -> MlflowClient:
    """The client of the current tracking URI (re-read each call: workers and tests change it)."""
    uri = tracking_uri()
    if uri not in _CLIENTS:
        db = sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        _CLIENTS[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return _CLIENTS[uri]


def experiment_id(name: str) -> str:
    """Id of experiment ``name``, created on first use (artifacts under mlruns/artifacts for local stores)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(tracking_uri())
    location = (root / name.replace("/", "_")).resolve().as_uri() if root is not None else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        return c.get_experiment_by_name(name).experiment_id
