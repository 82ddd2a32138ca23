"""The study -> ensemble -> visuals pipeline as library functions; the CLI only parses and prints.

``ensemble_study`` builds, scores, logs and registers one ensemble; ``run_study_pipeline`` runs a
study (or resumes it), then, when its file has an ``ensemble:`` section, builds that ensemble and
optionally its visuals (mosaic PNG, evolution GIF, error-analysis report), all logged to MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_exp.ensemble.build import EnsembleResult, EnsembleSpec
from salt_exp.ensemble.track import LoggedEnsemble


@dataclass(frozen=True)
class EnsembleOutcome:
    spec: EnsembleSpec
    result: EnsembleResult
    logged: LoggedEnsemble


@dataclass(frozen=True, kw_only=True)
class StudyOutcome:
    report: dict[str, Any]  # salt_exp.study.report.study_report of the study after its trials
    worker_codes: list[int]
    ensemble: EnsembleOutcome | None = None
    visuals: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c == 0 for c in self.worker_codes)


def ensemble_study(spec: EnsembleSpec) -> EnsembleOutcome:
    """Select members from the registry, score them out of fold, post-process, predict the test set,
    write the submission, log the ensemble run and register it as the study's champion."""
    import tempfile

    from salt_exp.ensemble.build import build_ensemble
    from salt_exp.ensemble.track import log_ensemble

    with tempfile.TemporaryDirectory(prefix="salt-exp-ens-") as tmp:
        result, data = build_ensemble(spec, Path(tmp))
        logged = log_ensemble(spec, result, Path(data.root))
    return EnsembleOutcome(spec, result, logged)


def check_before_ensemble(name: str, request: Any) -> None:
    """Before a study's ensemble: every COMPLETE trial has its snapshots in the registry and the journal and
    the store agree (else one line naming what is missing), unless the study runs with ``--ignore-missing``."""
    from salt_exp.errors import SaltError
    from salt_exp.study.consistency import missing_snapshots, store_mismatch
    from salt_exp.study.storage import default_storage_url, load_study

    if request.ignore_missing:
        return
    study = load_study(name, request.storage)
    mismatch = store_mismatch(study, name, request.storage or default_storage_url(name))
    if mismatch is not None:
        raise SaltError(f"before the ensemble: {mismatch.line()}")
    missing = missing_snapshots(study, name)
    if missing:
        raise SaltError(f"study {name}: COMPLETE trial(s) {', '.join(map(str, missing))} have no registered snapshot in "
                        f"salt-{name}; the ensemble would leave them out (rerun with --ignore-missing to build it anyway)")


def run_study_pipeline(request: Any, *, ensemble: bool = True,
                       on_report: Callable[[dict[str, Any]], None] | None = None) -> StudyOutcome:
    """Run (or resume) the study of ``request`` (a ``study.driver.StudyRequest``), then its ensemble and visuals.

    ``ensemble=False`` skips the study file's ``ensemble:`` section; ``on_report`` sees the study's
    trial table as soon as the trials are done, before the ensemble is built.
    """
    from salt_exp.study.driver import run_study
    from salt_exp.study.report import study_report
    from salt_exp.study.spec import load_study_spec

    spec = load_study_spec(request.spec_path, request.overrides)
    codes = run_study(request)
    report = study_report(spec.name, request.storage)
    if on_report is not None:
        on_report(report)
    if spec.ensemble is None or not ensemble:
        return StudyOutcome(report=report, worker_codes=codes)
    check_before_ensemble(spec.name, request)
    outcome = ensemble_study(EnsembleSpec.for_study(spec.name, options=spec.ensemble))
    visuals: list[Path] = []
    if spec.ensemble.report:
        from salt_exp.viz.commands import study_visuals

        visuals = study_visuals(spec.name)
    return StudyOutcome(report=report, worker_codes=codes, ensemble=outcome, visuals=visuals)
