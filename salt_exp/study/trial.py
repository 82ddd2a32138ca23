"""One Optuna trial = one MLflow parent run in ``salt/<study>`` with one nested fold run per fold.

Parent run tags: ``salt.role=trial``, ``salt.study``, ``salt.study_uid``, ``salt.trial`` (the MLflow
trial number: the first attempt's Optuna number for a resumed trial), ``salt.optuna_trial`` (the
latest attempt), ``salt.state`` (RUNNING | COMPLETE | PRUNED | FAIL | INTERRUPTED), ``salt.duration_s``,
``salt.failure``. Params: the sampled params. Metrics: ``fold<k>_map`` (best snapshot val_map of
fold k), ``cv_map`` (their mean, the objective).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import optuna

from salt_exp.config import ExperimentConfig, apply_overrides
from salt_exp.study.recover import MLFLOW_TRIAL, mlflow_trial_number
from salt_exp.study.spec import StudySpec, trial_overrides
from salt_exp.study.storage import STUDY_UID
from salt_exp.tracking import RunTracker, client, find_runs, run_metrics
from salt_exp.train.run import experiment_name, find_resumable, run_fold


class FoldFailed(RuntimeError):
    """A fold run ended FAILED (e.g. a non-finite loss); the message names the fold and the reason."""


class PruningHook:
    """Reports each epoch's ``val_map`` at step ``offset + epoch`` and prunes when the pruner says so."""

    def __init__(self, trial: optuna.Trial, offset: int) -> None:
        self.trial, self.offset = trial, offset

    def on_lr_find(self, result) -> None:
        pass

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        step = self.offset + epoch
        self.trial.report(float(metrics["val_map"]), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (val_map {metrics['val_map']:.4f})")

    def on_snapshot(self, snap, fd, published) -> None:
        pass

    def on_end(self, status: str, reason: str) -> None:
        pass


@dataclass
class TrialContext:
    study: optuna.Study
    spec: StudySpec
    base: ExperimentConfig


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict:
    """Sampled (or enqueued) value of every space key, in the space's order."""
    out = {}
    for p in spec.space:
        if p.type == "categorical":
            out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.type == "int":
            out[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)
    return out


def _parent_run(ctx: TrialContext, trial: optuna.Trial, number: int, params: dict) -> tuple[RunTracker, bool]:
    """The trial's parent run: the one of an earlier attempt of this MLflow trial number, else a new one."""
    name, uid = ctx.spec.name, ctx.study.user_attrs.get(STUDY_UID, "")
    query = (f"tags.`salt.role` = 'trial' and tags.`salt.study_uid` = '{uid}' and tags.`salt.trial` = '{number}'")
    found = find_runs(experiment_name(name), query, max_results=1)
    if found:
        tracker = RunTracker.resume(found[0].info.run_id)
    else:
        tags = {"salt.role": "trial", "salt.study": name, "salt.study_uid": uid, "salt.trial": str(number)}
        tracker = RunTracker.start(experiment_name(name), f"trial{number}", tags)
    tracker.log_params(params)
    tracker.set_tags({"salt.optuna_trial": str(trial.number), "salt.state": "RUNNING"})
    return tracker, bool(found)


def _close(tracker: RunTracker, state: str, started: float, status: str, failure: str = "") -> None:
    previous = float(tracker.tags().get("salt.duration_s", 0) or 0)
    tags = {"salt.state": state, "salt.duration_s": f"{previous + time.time() - started:.1f}"}
    if failure:
        tags["salt.failure"] = failure
    tracker.set_tags(tags)
    tracker.end(status)


def _fold_map(cfg: ExperimentConfig, fold: int, ctx: TrialContext, trial: optuna.Trial, number: int,
              parent_id: str, resume: bool, offset: int) -> float:
    info = run_fold(cfg, fold, study=ctx.spec.name, trial=number, parent_run_id=parent_id, resume=resume,
                    extra_hooks=[PruningHook(trial, offset)])
    result = info.result
    if result.status != "FINISHED":
        raise FoldFailed(f"fold {fold}: {result.reason}")
    if result.reason == "already finished":  # finished before an interruption: its metric is in MLflow
        return float(run_metrics(info.run_id).get("best_val_map", math.nan))
    return float(result.best_val_map)


def _mark_fold(cfg: ExperimentConfig, ctx: TrialContext, number: int, fold: int, status: str) -> None:
    found = find_resumable(cfg, ctx.spec.name, number, fold)
    if found is not None:  # run_fold already ended it KILLED; say why
        RunTracker(client(), found[0]).set_tags({"salt.status": status})


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> float:
    """Train every fold of ``trial``; returns cv_map. Raises TrialPruned, FoldFailed or the training error
    after recording it in MLflow (the caller records it in Optuna)."""
    started = time.time()
    params = suggest(trial, ctx.spec)
    number = mlflow_trial_number(trial.number, trial.user_attrs)
    trial.set_user_attr(MLFLOW_TRIAL, number)
    tracker, reused = _parent_run(ctx, trial, number, params)
    trial.set_user_attr("salt.parent_run_id", tracker.run_id)
    maps: dict[int, float] = {}
    cfg, fold = ctx.base, ctx.spec.folds[0]
    try:
        cfg = apply_overrides(ctx.base, trial_overrides(params))
        epochs = cfg.schedule.cycles * cfg.schedule.cycle_epochs
        for i, fold in enumerate(ctx.spec.folds):
            maps[fold] = _fold_map(cfg, fold, ctx, trial, number, tracker.run_id, reused, i * epochs)
            tracker.log_metrics({f"fold{fold}_map": maps[fold]}, step=0)
            trial.set_user_attr(f"salt.fold{fold}_map", maps[fold])
        cv_map = sum(maps.values()) / len(maps)
        tracker.log_metrics({"cv_map": cv_map}, step=0)
    except optuna.TrialPruned as exc:
        _mark_fold(cfg, ctx, number, fold, "PRUNED")
        _close(tracker, "PRUNED", started, "KILLED", str(exc))
        raise
    except KeyboardInterrupt:
        _close(tracker, "INTERRUPTED", started, "KILLED")
        raise
    except Exception as exc:
        _close(tracker, "FAIL", started, "FAILED", one_line(exc))
        raise
    _close(tracker, "COMPLETE", started, "FINISHED")
    return cv_map


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
