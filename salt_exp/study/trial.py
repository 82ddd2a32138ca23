"""One Optuna trial = one MLflow parent run in ``salt/<study>`` with one nested fold run per fold.

Parent run tags (``salt_exp.contract``): ``TrialRunTags`` (role, study, study uid, the MLflow trial
number: the first attempt's Optuna number for a resumed trial), ``Tag.OPTUNA_TRIAL`` (the latest
attempt), ``Tag.STATUS`` (a ``TrialState``), ``Tag.DURATION_S``, ``Tag.FAILURE``. Params: the sampled
params. Metrics: ``fold<k>_map`` (best snapshot val_map of fold k), ``cv_map`` (their mean, the objective).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import optuna

from salt_exp import contract as C
from salt_exp.config import ExperimentConfig, apply_overrides
from salt_exp.contract import FoldStatus, Tag, TrialAttr, TrialRunTags, TrialState
from salt_exp.study.recover import mlflow_trial_number
from salt_exp.study.spec import StudySpec, trial_overrides
from salt_exp.study.storage import study_uid
from salt_exp.tracking import RunTracker, find_runs
from salt_exp.train.hooks import EpochEnd, HookBase
from salt_exp.train.run import find_resumable, run_fold


class FoldFailed(RuntimeError):
    """A fold run ended FAILED (e.g. a non-finite loss); the message names the fold and the reason."""


BUDGET_STEPS = 10  # a budgeted fold run reports at every tenth of its budget


class PruningHook(HookBase):
    """Reports ``val_map`` to Optuna and prunes when the pruner says so.

    Unbudgeted runs report each epoch at step ``fold_index * epochs + epoch``. Time-budgeted runs
    (``schedule.budget_minutes``) differ in epoch count and length from trial to trial, so epoch numbers do
    not compare; they report the best ``val_map`` so far at every tenth of the budget spent, at step
    ``fold_index * 10 + tenth`` (1..10): trials are compared at equal wall time.
    """

    def __init__(self, trial: optuna.Trial, *, fold_index: int, epochs: int) -> None:
        self.trial, self.fold_index, self.epochs = trial, fold_index, epochs
        self.best, self.tenths = float("-inf"), 0

    def on_epoch(self, event: EpochEnd) -> None:
        value = float(event.metrics[C.Metric.VAL_MAP])
        share = event.metrics.get(C.Metric.BUDGET_SHARE)
        if share is None:
            self._report(value, self.fold_index * self.epochs + event.epoch)
            return
        self.best = max(self.best, value)
        reached = min(int(share * BUDGET_STEPS + 1e-9), BUDGET_STEPS)
        for tenth in range(self.tenths + 1, reached + 1):
            self.tenths = tenth
            self._report(self.best, self.fold_index * BUDGET_STEPS + tenth)

    def _report(self, value: float, step: int) -> None:
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (val_map {value:.4f})")


@dataclass
class TrialContext:
    study: optuna.Study
    spec: StudySpec
    base: ExperimentConfig
    n_trials: int = 0  # the study's budget, for the progress lines' ETA (0: no ETA)
    fold_seconds: list[float] = field(default_factory=list)  # fold runs trained by this process, for the pace


def _progress(ctx: TrialContext, number: int, fold: int, fold_index: int, value: float, seconds: float,
              reused: bool) -> None:
    """One line per finished fold run: its result, and the study's ETA at this process's pace."""
    from salt_exp.study.recover import counted_trials

    if not reused:
        ctx.fold_seconds.append(seconds)
    line = (f"[study {ctx.spec.name}] trial {number} fold {fold} done: best val_map {value:.4f} "
            + ("(had finished)" if reused else f"in {seconds / 60:.1f} min"))
    if ctx.n_trials and ctx.fold_seconds:
        not_started = max(0, ctx.n_trials - len(counted_trials(ctx.study.get_trials(deepcopy=False))))
        folds_left = len(ctx.spec.folds) - fold_index - 1 + not_started * len(ctx.spec.folds)
        pace = sum(ctx.fold_seconds) / len(ctx.fold_seconds)
        line += (f"; {folds_left} fold run(s) left ({not_started} trial(s) not started), study ETA "
                 f"~{folds_left * pace / 60:.0f} min at this worker's pace")
    print(line, flush=True)


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
    tags = TrialRunTags(study=ctx.spec.name, study_uid=study_uid(ctx.study), trial=number)
    found = find_runs(C.experiment_name(tags.study), tags.find_filter(), max_results=1)
    if found:
        tracker = RunTracker.resume(found[0].run_id)
    else:
        tracker = RunTracker.start(C.experiment_name(tags.study), f"trial{number}", tags.to_tags())
    tracker.log_params(params)
    tracker.set_tags({Tag.OPTUNA_TRIAL: str(trial.number), Tag.STATUS: TrialState.RUNNING.value})
    return tracker, bool(found)


def _fold_map(cfg: ExperimentConfig, fold: int, ctx: TrialContext, trial: optuna.Trial, *, number: int,
              parent_id: str, resume: bool, fold_index: int) -> float:
    epochs = cfg.schedule.cycles * cfg.schedule.cycle_epochs
    t0 = time.perf_counter()
    info = run_fold(cfg, fold, study=ctx.spec.name, trial=number, parent_run_id=parent_id, resume=resume,
                    extra_hooks=[PruningHook(trial, fold_index=fold_index, epochs=epochs)])
    result = info.result  # a fold finished before an interruption carries the best_val_map MLflow holds
    if result.status != FoldStatus.FINISHED:
        raise FoldFailed(f"fold {fold}: {result.reason}")
    _progress(ctx, number, fold, fold_index, float(result.best_val_map), time.perf_counter() - t0,
              info.already_finished)
    return float(result.best_val_map)


def _mark_fold(cfg: ExperimentConfig, ctx: TrialContext, number: int, *, fold: int, status: FoldStatus) -> None:
    found = find_resumable(cfg, ctx.spec.name, number, fold)
    if found is not None:  # run_fold already ended it KILLED; say why
        RunTracker.attach(found[0]).set_tags({Tag.STATUS: status.value})


def run_page(study: str, run_id: str) -> str:
    """The trial run's page in the MLflow UI: the tracking server's, else ``make ui``'s address (also when the
    workers write through the study's own short-lived local server)."""
    import os

    from salt_exp.stores import tracking_uri
    from salt_exp.tracking import experiment_id
    from salt_exp.ui import DEFAULT_UI, UI_ENV, ui_url

    uri = tracking_uri()
    base = os.environ.get(UI_ENV) or (uri if uri.startswith(("http://", "https://")) else DEFAULT_UI)
    return ui_url(base, experiment_id(C.experiment_name(study)), run_id)


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> float:
    """Train every fold of ``trial``; returns cv_map. Raises TrialPruned, FoldFailed or the training error
    after recording it in MLflow (the caller records it in Optuna)."""
    params = suggest(trial, ctx.spec)
    number = mlflow_trial_number(trial.number, trial.user_attrs)
    trial.set_user_attr(TrialAttr.MLFLOW_TRIAL, number)
    tracker, reused = _parent_run(ctx, trial, number, params)
    trial.set_user_attr(TrialAttr.PARENT_RUN_ID, tracker.run_id)
    trial.set_user_attr(TrialAttr.RUN_URL, run_page(ctx.spec.name, tracker.run_id))
    maps: dict[int, float] = {}
    cfg, fold = ctx.base, ctx.spec.folds[0]
    # on a prune: the fold that reported it is marked PRUNED (cfg and fold as the loop left them)
    with tracker.closing_parent(pruned=(optuna.TrialPruned,),
                                on_pruned=lambda: _mark_fold(cfg, ctx, number, fold=fold, status=FoldStatus.PRUNED)):
        cfg = apply_overrides(ctx.base, trial_overrides(params))
        for i, fold in enumerate(ctx.spec.folds):
            maps[fold] = _fold_map(cfg, fold, ctx, trial, number=number, parent_id=tracker.run_id, resume=reused,
                                   fold_index=i)
            tracker.log_metrics({C.Metric.fold_map(fold): maps[fold]}, step=0)
            trial.set_user_attr(TrialAttr.fold_map(fold), maps[fold])
        cv_map = sum(maps.values()) / len(maps)
        tracker.log_metrics({C.Metric.CV_MAP: cv_map}, step=0)
    return cv_map
