"""``salt-exp ui`` / ``make ui``: the MLflow UI over the project's store, opened on a study's training runs.

MLflow 3's UI opens an experiment in its GenAI layout (traces, judges) unless the URL asks for the
model-training one (``?workflowType=machine_learning``; the UI then remembers the choice in the browser):
the printed URL asks for it, and the project's experiments are created with the tag
``mlflow.experimentKind=custom_model_development`` as well.
"""

from __future__ import annotations

import subprocess
import sys

from salt_exp import contract as C
from salt_exp.stores import sqlite_path, tracking_uri

WORKFLOW = "workflowType=machine_learning"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `make ui` serves
UI_ENV = "SALT_EXP_UI_URL"  # the UI address links should use, where the tracking URI is not it


def ui_url(base: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """The UI page of an experiment (its runs table), of one run, or the experiment list, in the training layout."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{WORKFLOW}"
    if run_id is None:
        return f"{base}/#/experiments/{experiment_id}?{WORKFLOW}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW}"


def study_experiment(study: str | None) -> tuple[str | None, str]:
    """(experiment id of ``salt/<study>`` or None when it does not exist yet, a line saying which)."""
    if not study:
        return None, "all experiments"
    from salt_exp.tracking.store import client

    exp = client().get_experiment_by_name(C.experiment_name(study))
    if exp is None:
        return None, f"{C.experiment_name(study)} does not exist yet in {tracking_uri()}: showing all experiments"
    return exp.experiment_id, f"experiment {exp.name} (id {exp.experiment_id})"


def run_ui(study: str | None, host: str, port: int, url_only: bool = False) -> int:
    """Print the URL; serve the store with ``mlflow ui`` unless it is already a server (or ``url_only``)."""
    uri = tracking_uri()
    served = uri.startswith(("http://", "https://"))
    base = uri if served else f"http://{host}:{port}"
    exp_id, what = study_experiment(study)
    print(f"MLflow UI: {ui_url(base, exp_id)}  ({what})", flush=True)
    if served or url_only:
        return 0
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
