"""Optuna storage, sampler and pruner built from a :class:`StudySpec`.

Default storage: the journal file ``mlruns/optuna/<name>.journal`` (safe for several processes on
one machine: appends under a file lock). ``--storage postgresql://...`` (or any SQLAlchemy URL)
for several machines.
"""

from __future__ import annotations

import time
import uuid
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from salt_exp.contract import OLD_STUDY_UID_ATTR, STUDY_UID_ATTR, Metric
from salt_exp.errors import SaltError
from salt_exp.stores import optuna_journal
from salt_exp.study.spec import StudySpec


def default_storage_url(name: str) -> str:
    return optuna_journal(name)


def study_uid(study: optuna.Study) -> str:
    """The uid the study's trial runs are tagged with (studies made before the rename kept the old key)."""
    attrs = study.user_attrs
    return str(attrs.get(STUDY_UID_ATTR) or attrs.get(OLD_STUDY_UID_ATTR) or "")


def open_storage(url: str) -> BaseStorage:
    """A journal file for a path (or ``journal:PATH``), an RDB storage for a SQLAlchemy URL."""
    if "://" in url:
        for attempt in range(3):  # machines starting together race to create the schema: the loser retries
            try:
                return RDBStorage(url)
            except Exception as exc:  # noqa: BLE001 - driver missing, server down, bad URL: one line
                if attempt == 2:
                    raise SaltError(f"--storage {url}: cannot open the Optuna storage: "
                                    f"{str(exc).splitlines()[0]}") from None
                time.sleep(1.0 + attempt)
    path = Path(url.removeprefix("journal:"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _grid(spec: StudySpec) -> dict[str, list]:
    grid: dict[str, list] = {}
    for p in spec.space:
        if p.type == "categorical":
            grid[p.key] = list(p.choices)
        else:
            n = int(round((p.high - p.low) / (p.step or 1))) + 1
            grid[p.key] = [p.low + i * (p.step or 1) for i in range(n)]
    return grid


def build_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    opts = {k: v for k, v in spec.sampler.items() if k != "type"}
    kind = spec.sampler["type"]
    if kind == "random":
        return optuna.samplers.RandomSampler(**opts)
    if kind == "grid":
        return optuna.samplers.GridSampler(_grid(spec), **opts)
    return optuna.samplers.TPESampler(**opts)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    opts = {k: v for k, v in spec.pruner.items() if k != "type"}
    kind = spec.pruner["type"]
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**opts)
    return optuna.pruners.MedianPruner(**opts)


def open_study(spec: StudySpec, storage_url: str | None) -> optuna.Study:
    """Create or load the study named after the file; on creation, tag it with a uid and enqueue its trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url or default_storage_url(spec.name))
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=build_sampler(spec),
                                pruner=build_pruner(spec), direction="maximize", load_if_exists=True)
    if not study_uid(study):
        study.set_user_attr(STUDY_UID_ATTR, uuid.uuid4().hex[:12])
        with warnings.catch_warnings():  # experimental in Optuna 5; the dashboard then names the objective
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([Metric.CV_MAP])
        for params in spec.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def load_study(name: str, storage_url: str | None) -> optuna.Study:
    """An existing study, read-only use (report, dashboard)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_url or default_storage_url(name)
    if "://" not in storage and not Path(storage.removeprefix("journal:")).is_file():
        raise SaltError(f"study {name!r}: no Optuna storage at {storage} (run `salt-exp study studies/{name}.yaml` first, "
                        "or pass --storage)")
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        raise SaltError(f"study {name!r} is not in the storage {storage}") from None
