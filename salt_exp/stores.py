"""Where every store lives: the one place that knows the paths and the environment variables.

The defaults keep everything a run writes under ``mlruns/`` beside the code (the MLflow SQLite
store, its artifacts, fold files, Optuna journals, resume checkpoints); only the validated-dataset
cache lives in the user's home. Each location reads its environment variable when called, never
at import, so tests and workers can point it elsewhere.

=================  ==============================  ====================================
location           default                         override
=================  ==============================  ====================================
tracking store     ``sqlite:///mlruns/mlflow.db``  ``MLFLOW_TRACKING_URI``
artifacts (local)  ``mlruns/artifacts/``           (beside the SQLite file)
fold files         ``mlruns/folds/``               ``SALT_EXP_FOLDS``
run work folders   ``mlruns/work/<run_id>/``       ``SALT_EXP_WORK``
downloaded files   ``mlruns/work/viz-cache/``      (under the work root)
Optuna journals    ``mlruns/optuna/<study>.journal``  ``--storage``
dataset cache      ``~/.cache/salt-exp/``          ``SALT_EXP_CACHE``
submissions        ``submissions/<study>.csv``     ``--out``
reports            ``reports/<name>/``             ``--out``
=================  ==============================  ====================================
"""

from __future__ import annotations

import os
from pathlib import Path

STORE_DIR = Path("mlruns")


def default_tracking_uri() -> str:
    """The project's SQLite store under mlruns/ (``./mlflow.db`` links to it for MLflow's own default)."""
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the project's SQLite store under mlruns/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> Path | None:
    """Where a local SQLite store keeps its artifacts (``artifacts/`` beside the database), else None."""
    db = sqlite_path(uri)
    return None if db is None else db.parent / "artifacts"


def folds_root() -> Path:
    """Fold files: ``$SALT_EXP_FOLDS`` or ``mlruns/folds`` (beside the tracking store)."""
    return Path(os.environ.get("SALT_EXP_FOLDS") or STORE_DIR / "folds")


def work_root() -> Path:
    """Run work folders (resume checkpoints, snapshot files): ``$SALT_EXP_WORK`` or ``mlruns/work``."""
    return Path(os.environ.get("SALT_EXP_WORK") or STORE_DIR / "work")


def download_cache() -> Path:
    """Artifacts downloaded from the tracking store (keyed by run id, so never stale)."""
    return work_root() / "viz-cache"


def dataset_cache() -> Path:
    """Validated datasets as .npz: ``$SALT_EXP_CACHE`` or ``~/.cache/salt-exp``."""
    return Path(os.environ.get("SALT_EXP_CACHE") or Path.home() / ".cache" / "salt-exp")


def optuna_journal(study: str) -> str:
    """The default Optuna storage of a study: a journal file under mlruns/optuna/."""
    return str(STORE_DIR / "optuna" / f"{study}.journal")


def submission_path(study: str) -> Path:
    return Path("submissions") / f"{study}.csv"


def reports_dir(name: str) -> Path:
    return Path("reports") / name
