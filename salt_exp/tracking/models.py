"""MLflow 3 logged models: a pyfunc model saved from code, uploaded to a LoggedModel linked to its run.

Why not ``mlflow.pyfunc.log_model``: it infers the requirements by loading the model (13-17 s per call
on a 2-core CPU), copies every run param and every metric of the same step (per-epoch ones included)
onto the model, and needs the fluent active run. Here the same steps run explicitly: the model is
created linked to its source run (its ``step``: the cycle), saved with the pinned requirements of this
environment and a copy of the ``salt_exp`` package (so a fresh environment with the requirements loads
it), uploaded, then marked READY. A run's model is found again by ``(source run, key)``, so a resumed
run never logs a cycle's model twice; a model left PENDING by a killed process is marked FAILED and
replaced. A model whose upload failed keeps none of its files (no half-written weights stay in the artifact
store); when the machine was at fault (a full disk, an unreachable server) its record is deleted too, so the
rerun that continues the run leaves the store an uninterrupted run leaves.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.exceptions import MlflowException

from salt_exp.contract import Tag
from salt_exp.errors import SaltError, environment_failure
from salt_exp.stores import tracking_uri
from salt_exp.tracking.store import client

KEY_TAG, LOG_SECONDS_TAG = Tag.MODEL_KEY, Tag.MODEL_LOG_SECONDS
SERVER_ONLY = ("optuna-dashboard", "psycopg2-binary")  # requirements a model never imports


@functools.cache
def pip_requirements() -> tuple[str, ...]:
    """The project's runtime requirements pinned to the versions installed here (no inference)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        reqs = requires("salt-exp") or []
    except PackageNotFoundError:  # running from a source tree that was never installed
        reqs = ["torch", "torchvision", "numpy", "pandas", "opencv-python-headless", "albumentations", "pretrainedmodels",
                "timm", "mlflow", "PyYAML"]
    out = []
    for req in reqs:
        if ";" in req:  # extras (dev tools)
            continue
        name = req.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip()
        if name in SERVER_ONLY:
            continue
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return tuple(out)


@functools.cache
def package_code() -> str:
    """A copy of the ``salt_exp`` package without caches, made once per process (a model's ``code/``)."""
    src = Path(__file__).resolve().parents[1]
    dst = Path(tempfile.mkdtemp(prefix="salt-exp-code-")) / "salt_exp"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(dst)


def code_file(name: str) -> str:
    """The models-from-code file ``salt_exp/serving/<name>.py``."""
    return str(Path(__file__).resolve().parents[1] / "serving" / f"{name}.py")


def find_logged_model(run_id: str, key: str) -> str | None:
    """The READY model of ``run_id`` tagged ``key``; a PENDING one (its writer died) is marked FAILED."""
    c = client()
    exp = c.get_run(run_id).info.experiment_id
    found = c.search_logged_models([exp], filter_string=f"source_run_id = '{run_id}' AND tags.`{KEY_TAG}` = '{key}'")
    for m in found:
        if str(getattr(m.status, "name", m.status)) == "READY":
            return m.model_id
    for m in found:
        if str(getattr(m.status, "name", m.status)) == "PENDING":
            discard_model(m.model_id, m.artifact_location)
    return None


def discard_model(model_id: str, artifact_location: str, *, delete: bool = False) -> None:
    """A logged model whose upload did not finish: its files removed, marked FAILED (kept as a trace), or deleted
    (``delete``: MLflow's soft delete, hidden from searches; ``mlflow gc`` purges it). Best effort: it runs while
    another error is being reported."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    c = client()
    try:
        get_artifact_repository(artifact_location).delete_artifacts()
        if artifact_location.startswith("file:"):  # the model's now empty folder (models/<id>/) too
            from mlflow.utils.file_utils import local_file_uri_to_path

            folder = Path(local_file_uri_to_path(artifact_location)).parent
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    except Exception:  # noqa: BLE001 - an unreachable or read-only store: the record still says FAILED
        pass
    try:
        c.finalize_logged_model(model_id, "FAILED")
        if delete:
            c.delete_logged_model(model_id)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass


def log_pyfunc_model(run_id: str, *, name: str, key: str, code: str, artifacts: Mapping[str, str | Path],
                     signature: Any, model_type: str, step: int = 0, params: Mapping[str, Any] | None = None,
                     tags: Mapping[str, Any] | None = None) -> str:
    """A pyfunc model (``code``: a models-from-code file) as a READY logged model of ``run_id``; returns its
    id. Logged once per ``(run_id, key)``: an earlier READY model is returned instead."""
    started = time.time()
    c = client()
    existing = find_logged_model(run_id, key)
    if existing:
        _link_output(run_id, existing, step)
        return existing
    exp = c.get_run(run_id).info.experiment_id
    model = c.create_logged_model(exp, name=name, source_run_id=run_id, model_type=model_type,
                                  params={k: str(v)[:6000] for k, v in (params or {}).items()},
                                  tags={KEY_TAG: key, **{k: str(v) for k, v in (tags or {}).items()}})
    try:
        with tempfile.TemporaryDirectory(prefix="salt-exp-model-") as tmp:
            local = os.path.join(tmp, "model")
            record = mlflow.models.Model(artifact_path=model.artifact_location, model_uuid=model.model_id,
                                         run_id=run_id, model_id=model.model_id)
            with warnings.catch_warnings():  # "add type hints" / "no input example": the signature is explicit
                warnings.simplefilter("ignore", UserWarning)
                mlflow.pyfunc.save_model(local, python_model=code, artifacts={k: str(v) for k, v in artifacts.items()},
                                         signature=signature, pip_requirements=list(pip_requirements()),
                                         code_paths=[package_code()], mlflow_model=record)
            c.log_model_artifacts(model.model_id, local)
        c.set_logged_model_tags(model.model_id, {LOG_SECONDS_TAG: f"{time.time() - started:.2f}"})
        c.finalize_logged_model(model.model_id, "READY")
        _link_output(run_id, model.model_id, step)  # the run's "Logged models" list: READY models only
    except BaseException as exc:
        failure = environment_failure(exc) if isinstance(exc, Exception) else None
        discard_model(model.model_id, model.artifact_location, delete=failure is not None)
        if failure is not None:
            raise failure from exc  # one line saying what to free or start, and what to rerun
        raise
    return model.model_id


def _link_output(run_id: str, model_id: str, step: int) -> None:
    """The model as an output of its run at ``step``, once."""
    c = client()
    outputs = c.get_run(run_id).outputs
    if outputs is None or all(o.model_id != model_id for o in outputs.model_outputs):
        c.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])


def log_snapshot_model(run_id: str, template: Any, *, cycle: int, epoch: int, threshold: float, weights: Path,
                       label: str, step: int, meta_extra: Mapping[str, Any] | None = None,
                       params_extra: Mapping[str, Any] | None = None) -> str:
    """One snapshot (a cycle's, or SWA's) as a pyfunc logged model of its fold run: the weights file, a
    ``snapshot.json`` (label, threshold, where it comes from) and the params the model page shows. ``template``:
    the run's ``contract.SnapshotVersion`` (study, trial, fold, encoder, model); ``meta_extra``/``params_extra``: more
    of each (an SWA snapshot's averaged cycles)."""
    import json

    from salt_exp import contract as C
    from salt_exp.serving.pyfunc import WEIGHTS_ARTIFACT, signature

    t, fold = template, C.fold_label(template.fold)
    meta = {"label": label, "threshold": float(threshold), "study": t.study, "trial": t.trial, "fold": fold,
            "cycle": int(cycle), "epoch": int(epoch), "run_id": run_id, **(meta_extra or {})}
    with tempfile.TemporaryDirectory(prefix="salt-exp-snap-") as tmp:
        meta_file = Path(tmp) / "snapshot.json"
        meta_file.write_text(json.dumps(meta, indent=2))
        return log_pyfunc_model(
            run_id, name=C.snapshot_logged_name(t.fold, cycle), key=C.snapshot_model_key(cycle),
            code=code_file("snapshot_model"), artifacts={WEIGHTS_ARTIFACT: weights, "meta": meta_file},
            signature=signature("snapshot"), model_type=C.SNAPSHOT_MODEL_TYPE, step=step,
            params={"study": t.study, "trial": t.trial, "fold": fold, "cycle": cycle, "epoch": epoch,
                    "encoder": t.encoder, "val_best_thr": threshold, "registered_model": t.model, **(params_extra or {})},
            tags={Tag.STUDY: t.study, Tag.FOLD: fold, Tag.TRIAL: t.trial})


def log_model_metrics(run_id: str, model_id: str, metrics: Mapping[str, float], step: int,
                      dataset: tuple[str, str] | None = None) -> None:
    """Metrics of the run that belong to one of its models (the model page lists them, with the dataset
    ``(name, digest)`` they were measured on)."""
    now = int(time.time() * 1000)
    name, digest = dataset if dataset else (None, None)
    batch = [Metric(k, float(v), now, int(step), model_id=model_id, dataset_name=name, dataset_digest=digest)
             for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):
        client().log_batch(run_id, metrics=batch[i:i + 1000])


def fetch_model_file(model_id: str, path: str, cache: Path) -> Path:
    """A file of a logged model's artifacts as a local file under ``cache/models/<model_id>/``, downloaded once."""
    local = cache / "models" / model_id / path
    if not local.exists():
        try:
            location = client().get_logged_model(model_id).artifact_location
        except MlflowException as exc:
            raise SaltError(f"logged model {model_id}: not in {tracking_uri()}") from exc
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=local.parent, prefix=".download-") as tmp:  # a cut download is no hit
            got = mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/{path}", dst_path=tmp,
                                                      tracking_uri=tracking_uri())
            os.replace(got, local)
    return local


def model_location(model_id: str) -> str | None:
    """A logged model's artifact location, None when the store has no such model."""
    try:
        return client().get_logged_model(model_id).artifact_location
    except MlflowException:
        return None


def model_status(model_id: str) -> str | None:
    try:
        m = client().get_logged_model(model_id)
    except MlflowException:
        return None
    return str(getattr(m.status, "name", m.status))
