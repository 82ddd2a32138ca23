"""The tracking store and its one client per process.

Store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` unless
``MLFLOW_TRACKING_URI`` is set (e.g. a local ``mlflow server`` when several processes write); the
locations are decided in ``salt_exp.stores``. Every call goes through an explicit ``MlflowClient``
(one per tracking URI, reused), so nested runs and several runs per process never share MLflow's
hidden "active run" state.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from salt_exp.stores import artifact_root, default_tracking_uri, sqlite_path, tracking_uri

_CLIENTS: dict[str, MlflowClient] = {}
RESEND_WAIT_S = 1.0  # first wait before a request whose response broke off is sent again; doubles, capped at 8 s


def resend_broken_responses() -> None:
    """Send a REST request again when its response broke off half-way.

    A tracking server killed while it writes a response (the study's own server, restarted by the study) leaves
    the client a truncated body: requests raises ``ChunkedEncodingError`` ("Connection broken: IncompleteRead")
    after urllib3 has handed the response over, so the ``Retry`` MLflow configures never sees it; that one
    ``metrics/get-history`` call failed a whole trial in CI. urllib3's Retry resends every method (MLflow sets
    ``allowed_methods=None``) when a connection fails before the response starts; a response that stops midway
    is the same failure a few bytes later, so it is resent the same number of times
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``). Installed once per process, on MLflow's REST layer.
    """
    import requests
    from mlflow.utils import rest_utils

    send = rest_utils._get_http_response_with_retries
    if getattr(send, "salt_exp_resends", False):
        return

    @functools.wraps(send)
    def send_again_when_broken(*args, **kwargs):
        tries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7"))
        for attempt in range(tries + 1):
            try:
                return send(*args, **kwargs)
            except requests.exceptions.ChunkedEncodingError:
                if attempt == tries:
                    raise
                time.sleep(min(RESEND_WAIT_S * 2 ** attempt, 8.0))

    send_again_when_broken.salt_exp_resends = True
    rest_utils._get_http_response_with_retries = send_again_when_broken


resend_broken_responses()
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
