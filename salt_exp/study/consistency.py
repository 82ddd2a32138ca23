"""The Optuna storage and the MLflow store kept in step: a study resumes (and ensembles) only when every
finished trial of its journal has its trial run in the store, and the store holds no trial runs of this
study that the journal does not know.

They drift apart when one of the two is moved, deleted, restored from a backup, or when a second machine
is given another store: Optuna then reports trials COMPLETE whose runs and snapshots the store lacks, and
an ensemble would silently be built without the best of them. Matching is by the study uid (an Optuna
study user attribute, also a tag of every trial run) and the MLflow trial number (``salt.trial``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from salt_exp import contract as C
from salt_exp.contract import Tag, TrialAttr
from salt_exp.stores import tracking_uri
from salt_exp.study.storage import study_uid

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
IGNORED_ATTR = "salt.ignored_store_mismatch"  # study user attribute: what a --ignore-missing resume accepted
NEW_ATTR = "salt.new_study_reason"  # study user attribute of a study started with --new


def _numbers(trials: list[optuna.trial.FrozenTrial]) -> list[int]:
    return sorted({int(t.user_attrs.get(TrialAttr.MLFLOW_TRIAL, t.number)) for t in trials})


@dataclass(frozen=True, kw_only=True)
class StoreMismatch:
    study: str
    journal: str
    store: str
    missing: tuple[int, ...]  # finished in Optuna, no trial run in the store
    unknown: tuple[int, ...]  # trial runs of this study in the store, unknown to the journal

    def line(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"Optuna ({self.journal}) has {len(self.missing)} finished trial(s) "
                         f"({', '.join(map(str, self.missing))}) with no runs in {self.store}")
        if self.unknown:
            parts.append(f"{self.store} has runs of trial(s) {', '.join(map(str, self.unknown))} that the Optuna "
                         f"storage {self.journal} does not know")
        return (f"study {self.study}: " + "; ".join(parts) + "; point MLFLOW_TRACKING_URI (or --storage) at the stores "
                "they were logged to, start a new study with --new, or continue without them with --ignore-missing")


def store_mismatch(study: optuna.Study, name: str, journal: str) -> StoreMismatch | None:
    """How the journal's trials and the store's trial runs of this study differ; None when they agree."""
    from salt_exp.tracking import find_runs

    uid = study_uid(study)
    trials = study.get_trials(deepcopy=False)
    runs = find_runs(C.experiment_name(name), C.TrialRunTags.study_filter(uid))
    in_store = {int(r.tags[Tag.TRIAL]) for r in runs if r.tags.get(Tag.TRIAL, "").isdigit()}
    missing = tuple(n for n in _numbers([t for t in trials if t.state in FINISHED]) if n not in in_store)
    unknown = tuple(sorted(in_store - set(_numbers(trials))))
    if not missing and not unknown:
        return None
    return StoreMismatch(study=name, journal=journal, store=tracking_uri(), missing=missing, unknown=unknown)


def accept_mismatch(study: optuna.Study, mismatch: StoreMismatch) -> None:
    """``--ignore-missing``: go on, with what was accepted recorded on the study (appended, never replaced)."""
    earlier = study.user_attrs.get(IGNORED_ATTR, [])
    study.set_user_attr(IGNORED_ATTR, [*earlier, f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {mismatch.line()}"])


def missing_snapshots(study: optuna.Study, name: str) -> tuple[int, ...]:
    """COMPLETE trials (MLflow numbers) with no registered snapshot in ``salt-<name>``: an ensemble would
    silently leave them out."""
    from salt_exp.tracking import snapshot_versions

    have = {v.trial for v in snapshot_versions(C.snapshot_model(name))}
    done = _numbers([t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE])
    return tuple(n for n in done if str(n) not in have)


def set_aside(study: optuna.Study, name: str, journal: str) -> str:
    """``--new``: keep the old study where nothing reads it and return where: a journal file is renamed
    (``<file>.<time>.bak``); a database study is copied to ``<name>.bak-<time>`` in the same storage and deleted."""
    from pathlib import Path

    from salt_exp.study.storage import open_storage

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if "://" not in journal:
        path = Path(journal.removeprefix("journal:"))
        target = path.with_name(f"{path.name}.{stamp}.bak")
        if path.exists():
            path.rename(target)
        return str(target)
    storage = open_storage(journal)
    backup = f"{name}.bak-{stamp}"
    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=backup)
    optuna.delete_study(study_name=name, storage=storage)
    return f"study {backup} in {journal}"
