"""``salt-exp train``: one fold of one config as one MLflow run, resumable after a kill."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from salt_exp.config import ExperimentConfig, config_hash, dump_yaml, flatten
from salt_exp.tracking import RunTracker, find_runs
from salt_exp.train.fold_run import FoldResult, FoldTrainer, Hook
from salt_exp.train.mlflow_hook import MLflowHook
from salt_exp.train.setup import load_fold
from salt_exp.train.state import work_root


@dataclass(frozen=True)
class FoldRunInfo:
    run_id: str
    result: FoldResult
    versions: dict[int, str]


def experiment_name(study: str) -> str:
    return f"salt/{study}"


def registered_model_name(study: str) -> str:
    return f"salt-{study}"


def _run_tags(cfg: ExperimentConfig, study: str, trial: int | None, fold: int) -> dict[str, str]:
    return {"salt.study": study, "salt.trial": "none" if trial is None else str(trial), "salt.fold": str(fold),
            "salt.role": "fold", "salt.config_hash": config_hash(cfg), "salt.encoder": cfg.model.encoder,
            "salt.data_root": str(Path(cfg.data.root).resolve())}


def find_resumable(cfg: ExperimentConfig, study: str, trial: int | None, fold: int) -> tuple[str, str] | None:
    """(run_id, status) of the newest run of this study/trial/fold/config, or None."""
    tags = _run_tags(cfg, study, trial, fold)
    query = " and ".join(f"tags.`{k}` = '{tags[k]}'" for k in ("salt.trial", "salt.fold", "salt.config_hash", "salt.role"))
    runs = find_runs(experiment_name(study), query, max_results=1)
    return (runs[0].info.run_id, runs[0].info.status) if runs else None


class _TermAsInterrupt:
    """SIGTERM behaves like Ctrl-C while training, so the run is closed as KILLED."""

    def __enter__(self):
        self._old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._old)
        return False


def run_fold(cfg: ExperimentConfig, fold: int, *, study: str = "adhoc", trial: int | None = None,
             parent_run_id: str | None = None, resume: bool = False, extra_hooks: list[Hook] | None = None) -> FoldRunInfo:
    fd = load_fold(cfg, fold)
    previous = find_resumable(cfg, study, trial, fold) if resume else None
    if previous is not None and previous[1] == "FINISHED":
        return FoldRunInfo(previous[0], FoldResult("FINISHED", "already finished", float("nan"), []), {})
    if previous is not None:
        tracker = RunTracker.resume(previous[0])
    else:
        name = f"fold{fold}" if trial is None else f"trial{trial}-fold{fold}"
        tracker = RunTracker.start(experiment_name(study), name, _run_tags(cfg, study, trial, fold), parent_run_id)
        tracker.log_params({**flatten(cfg), "fold": fold})
        tracker.log_text(dump_yaml(cfg), "config.yaml")
        tracker.log_artifact(fd.folds_file, "folds")
    tracker.start_system_metrics()
    hook = MLflowHook(tracker, registered_model_name(study),
                      {"study": study, "trial": "none" if trial is None else str(trial), "fold": str(fold),
                       "encoder": cfg.model.encoder, "run_id": tracker.run_id})
    workdir = work_root() / tracker.run_id
    trainer = FoldTrainer(cfg, fd, fold, workdir, [hook, *(extra_hooks or [])])
    status = "KILLED"
    try:
        with _TermAsInterrupt():
            result = trainer.run(resume=previous is not None)
        status = result.status
        if result.status == "FINISHED":
            tracker.log_metrics({"best_val_map": result.best_val_map}, trainer.total_epochs)
    finally:
        tracker.end(status)
    return FoldRunInfo(tracker.run_id, result, hook.versions)
