"""``salt-exp train``: one fold of one config as one tracked MLflow run, resumable after a kill.

This module is the MLflow wiring of a fold run (start or resume the run, log the config, hand the
loop its hooks, close the run); the loop itself is ``fold_run.FoldTrainer``, its parts ``setup``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from salt_exp import contract as C
from salt_exp.config import ExperimentConfig, config_hash, dump_yaml, flatten
from salt_exp.contract import FoldRunTags, FoldStatus, RunStatus, SnapshotVersion
from salt_exp.errors import SaltError
from salt_exp.signals import term_as_interrupt
from salt_exp.stores import download_cache, work_root
from salt_exp.tracking import RunTracker, fetch_artifact, find_runs, git_commit
from salt_exp.train.fold_run import FoldResult, FoldTrainer
from salt_exp.train.hooks import EpochLog, HookBase
from salt_exp.train.mlflow_hook import MLflowHook
from salt_exp.train.setup import (
    FoldData,
    build_parts,
    context_params,
    fold_datasets,
    load_fold,
    pseudo_params,
    pseudo_tags,
)
from salt_exp.train.state import CheckpointIdentity
from salt_exp.train.sync import CheckpointSync, restore


@dataclass(frozen=True)
class FoldRunInfo:
    run_id: str
    result: FoldResult
    versions: dict[int, str]
    already_finished: bool = False  # a resume found the run finished: nothing was trained


def fold_run_tags(cfg: ExperimentConfig, study: str, trial: int | None, fold: int) -> FoldRunTags:
    return FoldRunTags(study=study, trial=C.trial_label(trial), fold=fold, config_hash=config_hash(cfg),
                       encoder=cfg.model.encoder, data_root=str(Path(cfg.data.root).resolve()))


def find_resumable(cfg: ExperimentConfig, study: str, trial: int | None, fold: int) -> tuple[str, str] | None:
    """(run_id, MLflow status) of the newest run of this study/trial/fold/config, or None."""
    tags = fold_run_tags(cfg, study, trial, fold)
    runs = find_runs(C.experiment_name(study), tags.resume_filter(), max_results=1)
    return (runs[0].run_id, runs[0].status) if runs else None


def _finished(run_id: str) -> FoldRunInfo:
    """A run that finished before: its result as MLflow holds it."""
    from salt_exp.tracking import run_summary

    best = run_summary(run_id).metrics.get(C.Metric.BEST_VAL_MAP, math.nan)
    return FoldRunInfo(run_id, FoldResult(FoldStatus.FINISHED, "", float(best), []), {}, already_finished=True)


def _start(cfg: ExperimentConfig, tags: FoldRunTags, *, trial: int | None, parent_run_id: str | None,
           fd: FoldData, extra_params: dict | None = None) -> RunTracker:
    fold = C.fold_label(tags.fold)
    name = "full-fit" if tags.fold == C.FULL_FIT else f"fold{fold}" if trial is None else f"trial{trial}-fold{fold}"
    tracker = RunTracker.start(C.experiment_name(tags.study), name, {**tags.to_tags(), **pseudo_tags(fd)}, parent_run_id)
    tracker.log_params({**flatten(cfg), "fold": fold, **pseudo_params(fd), **context_params(fd), **(extra_params or {})})
    tracker.log_text(dump_yaml(cfg), C.CONFIG_FILE)
    tracker.log_artifact(fd.folds_file, C.FOLDS_DIR)
    tracker.log_datasets(fold_datasets(fd, tags.fold))
    return tracker


def pseudo_labels_file(cfg: ExperimentConfig) -> Path | None:
    """The local copy of ``pseudo.labels`` (a pseudo run's artifact, downloaded once), None without pseudo-labels."""
    if not cfg.pseudo.labels:
        return None
    run_id, path = C.parse_pseudo_labels(cfg.pseudo.labels)
    try:
        return fetch_artifact(run_id, path, download_cache())
    except SaltError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing run or artifact: one line naming the value
        raise SaltError(f"pseudo.labels {cfg.pseudo.labels}: cannot fetch it ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from exc


def warm_start(cfg: ExperimentConfig, fd: FoldData, fold: int) -> tuple[dict | None, dict[str, object]]:
    """``pseudo.warm_start``: (the fold's best source member's state_dict, checked to fit the config's model, and
    its params), else (None, {})."""
    if not cfg.pseudo.warm_start:
        return None, {}
    if fd.pseudo is None:
        raise SaltError("pseudo.warm_start: needs pseudo.labels (salt-exp pseudo sets it): the labels name the "
                        "ensemble whose members the fold runs start from")
    from salt_exp.ensemble.predict import load_member
    from salt_exp.pseudo.source import warm_member

    member = warm_member(fd.pseudo.source.get("ensemble", ""), fold)
    state = load_member(member, download_cache())[0].state_dict()
    try:  # checked on a model of the round's config here, before any run starts: a mismatch logs nothing
        build_parts(cfg)[0].load_state_dict(state)
    except RuntimeError as exc:
        raise SaltError(f"pseudo.warm_start: {member.key}'s weights do not fit this run's model (the config must "
                        f"build the same network: {str(exc).splitlines()[0][:160]})") from exc
    params = {"warm_start_member": member.key, "warm_start_val_map": round(member.val_map, 4)}
    print(f"[fold {C.fold_label(fold)}] warm start from {member.key} (val_map {member.val_map:.4f})", flush=True)
    return state, params


def run_fold(cfg: ExperimentConfig, fold: int, *, study: str = C.ADHOC, trial: int | None = None,
             parent_run_id: str | None = None, resume: bool = False,
             extra_hooks: list[HookBase] | None = None, threshold: float = 0.5,
             extra_params: dict | None = None) -> FoldRunInfo:
    """``fold`` ``contract.FULL_FIT``: a full-data fit, its snapshots registered with ``threshold``;
    ``extra_params`` are logged with the config when the run starts."""
    fd = load_fold(cfg, fold, pseudo_file=pseudo_labels_file(cfg))
    tags = fold_run_tags(cfg, study, trial, fold)
    previous = find_resumable(cfg, study, trial, fold) if resume else None
    if previous is not None and previous[1] == RunStatus.FINISHED.value:
        return _finished(previous[0])
    init, init_params = warm_start(cfg, fd, fold)  # before the run starts: a missing member logs nothing
    if previous is not None:
        tracker = RunTracker.resume(previous[0])
    else:
        tracker = _start(cfg, tags, trial=trial, parent_run_id=parent_run_id, fd=fd,
                         extra_params={**init_params, **(extra_params or {})})
    tracker.start_system_metrics()
    template = SnapshotVersion(model=C.snapshot_model(study), run_id=tracker.run_id, study=study, trial=tags.trial,
                               fold=fold, encoder=cfg.model.encoder, cycle=-1, val_map=math.nan, val_best_thr=threshold,
                               weights="", oof="")
    validation = [(r.name, r.digest) for r in fold_datasets(fd, fold) if r.context == "validation"]
    hook = MLflowHook(tracker, template, validation[0] if validation else None)
    label = f"{study} fold {C.fold_label(fold)}" if trial is None else f"{study} trial {trial} fold {fold}"
    workdir = work_root() / tracker.run_id
    # another machine's synced checkpoint, when it is newer than this machine's (or this machine has none)
    restored = restore(tracker, workdir) if previous is not None else ""
    hooks = [hook, EpochLog(label), CheckpointSync(tracker, cfg.sync, label=label), *(extra_hooks or [])]
    identity = CheckpointIdentity(config_hash=config_hash(cfg), commit=git_commit())
    trainer = FoldTrainer(cfg, fd, fold, workdir=workdir, hooks=hooks, identity=identity, restored_from=restored,
                          init=init)
    status = RunStatus.KILLED
    try:
        with term_as_interrupt():  # SIGTERM: the run is closed as KILLED, like Ctrl-C
            result = trainer.run(resume=previous is not None)
        status = RunStatus.FINISHED if result.status == FoldStatus.FINISHED else RunStatus.FAILED
        if result.status == FoldStatus.FINISHED and not math.isnan(result.best_val_map):
            tracker.log_metrics({C.Metric.BEST_VAL_MAP: result.best_val_map}, trainer.state.epochs_done)
    finally:
        tracker.end(status)
    return FoldRunInfo(tracker.run_id, result, hook.versions)
