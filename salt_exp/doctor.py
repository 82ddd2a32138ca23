"""``salt-exp doctor [--study NAME]``: the store, the Optuna journal, the registry and the artifact root checked
against each other, one line per finding (exit 1 when there is any).

Checks, per study (``salt/<name>`` experiments; ``--study`` for one):
- journal vs store: finished trials without trial runs, trial runs the journal does not know, COMPLETE trials
  without registered snapshots (``study.consistency``), when the study has a journal;
- trials RUNNING in the journal whose worker is gone (the next ``salt-exp study`` requeues them), and MLflow
  runs still RUNNING whose trial is no longer running;
- finished fold runs without artifacts, and registry versions whose source folder is gone;
- fold runs of one study that disagree on a fold's validation tiles (their dataset inputs' digests), i.e.
  folds files that differ between runs an ensemble would combine.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from salt_exp import contract as C
from salt_exp.contract import Role, Tag
from salt_exp.stores import tracking_uri

STALE_AFTER_S = 600.0  # a RUNNING trial whose worker is on another host and silent this long counts as gone


@dataclass(frozen=True)
class Finding:
    study: str
    what: str

    def line(self) -> str:
        return f"{self.study}: {self.what}"


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else None


def _studies(name: str | None) -> list[str]:
    from salt_exp.tracking import client

    if name:
        return [name]
    return sorted(e.name.removeprefix("salt/") for e in client().search_experiments() if e.name.startswith("salt/"))


def journal_findings(name: str, storage: str | None) -> list[Finding]:
    import optuna

    from salt_exp.study.consistency import missing_snapshots, store_mismatch
    from salt_exp.study.recover import is_stale
    from salt_exp.study.storage import default_storage_url, open_storage

    url = storage or default_storage_url(name)
    if "://" not in url and not Path(url.removeprefix("journal:")).is_file():
        return []  # a cv or ad-hoc experiment: no Optuna study
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        return [Finding(name, f"the Optuna storage {url} holds no study {name!r}")]
    out = []
    mismatch = store_mismatch(study, name, url)
    if mismatch is not None:
        out.append(Finding(name, mismatch.line().removeprefix(f"study {name}: ")))
    missing = missing_snapshots(study, name)
    if missing:
        out.append(Finding(name, f"COMPLETE trial(s) {', '.join(map(str, missing))} have no registered snapshot in "
                                 f"{C.snapshot_model(name)}"))
    now = time.time()
    stale = [t.number for t in study.get_trials(deepcopy=False) if is_stale(t, STALE_AFTER_S, now)]
    if stale:
        out.append(Finding(name, f"Optuna trial(s) {', '.join(map(str, stale))} RUNNING but their worker is gone; "
                                 "the next `salt-exp study` of this study requeues and resumes them"))
    running = {str(t.user_attrs.get(C.TrialAttr.MLFLOW_TRIAL, t.number))
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    from salt_exp.tracking import find_runs

    for run in find_runs(C.experiment_name(name), "attributes.status = 'RUNNING'"):
        trial = run.tags.get(Tag.TRIAL, C.NO_TRIAL)
        if trial != C.NO_TRIAL and trial not in running:
            out.append(Finding(name, f"run {run.run_id} ({run.tags.get(Tag.ROLE, '?')}, trial {trial}) is RUNNING "
                                     "but its trial is not: a killed worker left it open"))
    return out


def store_findings(name: str) -> list[Finding]:
    from salt_exp.tracking import client, ensemble_versions, find_runs, snapshot_versions
    from salt_exp.tracking.registry import version_model_id

    out = []
    folds = find_runs(C.experiment_name(name), f"tags.`{Tag.ROLE}` = '{Role.FOLD.value}'")
    for run in folds:
        if run.status == "FINISHED" and not client().list_artifacts(run.run_id):  # files and folders alike
            out.append(Finding(name, f"fold run {run.run_id} FINISHED but holds no artifacts (artifact root moved or "
                                     "deleted?)"))
    for v in snapshot_versions(C.snapshot_model(name)):
        out += _source_findings(name, f"{v.key} (run {v.run_id}, {C.cycle_label(v.cycle)})",
                                client().get_model_version(v.model, v.version).source, v.model_id)
    for e in ensemble_versions(C.ensemble_model(name)):
        rv = client().get_model_version(e.model, e.version)
        out += _source_findings(name, f"{e.model}/v{e.version} (ensemble run {e.ensemble_run})", rv.source,
                                version_model_id(rv))
    out += _fold_disagreements(name, [r.run_id for r in folds])
    return out


def _source_findings(name: str, what: str, source: str, model_id: str) -> list[Finding]:
    """A registry version whose source (a logged model, or a plain artifact folder) is gone or unfinished."""
    from salt_exp.tracking.models import model_location, model_status

    if model_id:
        status = model_status(model_id)
        if status is None:
            return [Finding(name, f"{what}: its logged model {model_id} is not in the store")]
        if status != "READY":
            return [Finding(name, f"{what}: its logged model {model_id} is {status}, not READY")]
        source = model_location(model_id) or source
    local = _local_path(source)
    if local is not None and not local.exists():
        return [Finding(name, f"{what}: its source {source} is gone")]
    return []


def _fold_disagreements(name: str, run_ids: list[str]) -> list[Finding]:
    """Fold runs of the same fold (and data) whose validation tiles differ: their folds files differ."""
    from salt_exp.tracking import client

    digests: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for run_id in run_ids:
        run = client().get_run(run_id)
        fold = run.data.tags.get(Tag.FOLD, "?")
        for i in run.inputs.dataset_inputs:
            context = next((t.value for t in i.tags if t.key == "mlflow.data.context"), "")
            if context == "validation":
                digests[(run.data.tags.get(Tag.DATA_ROOT, "?"), fold)][i.dataset.digest].append(run_id)
    out = []
    for (root, fold), by_digest in sorted(digests.items()):
        if len(by_digest) > 1:
            parts = "; ".join(f"{d}: {', '.join(r[:8] for r in runs)}" for d, runs in sorted(by_digest.items()))
            out.append(Finding(name, f"fold {fold} runs on {root} disagree on its validation tiles (folds files differ; "
                                     f"an ensemble of them is not out of fold): {parts}"))
    return out


def _unknown(name: str, storage: str | None) -> Finding | None:
    """A study named on the command line that neither the store nor the Optuna storage holds (a typo, or another
    store): said, instead of "no findings"."""
    from salt_exp.study.storage import default_storage_url
    from salt_exp.tracking import client

    if client().get_experiment_by_name(C.experiment_name(name)) is not None:
        return None
    url = storage or default_storage_url(name)
    if "://" in url or Path(url.removeprefix("journal:")).is_file():
        return None  # a journal (or database) to check: journal_findings says what the store lacks
    return Finding(name, f"no such study: the store {tracking_uri()} has no experiment {C.experiment_name(name)} and "
                         f"there is no Optuna journal {url}")


def doctor(study: str | None = None, storage: str | None = None) -> list[Finding]:
    """Every finding, studies in name order."""
    if study and (unknown := _unknown(study, storage)) is not None:
        return [unknown]
    out = []
    for name in _studies(study):
        out += journal_findings(name, storage if study else None)
        out += store_findings(name)
    return out


def report_lines(findings: list[Finding], study: str | None) -> list[str]:
    scope = f"study {study}" if study else "every study"
    if not findings:
        return [f"doctor: {scope} in {tracking_uri()}: no findings"]
    return [f.line() for f in findings] + [f"doctor: {len(findings)} finding(s) in {scope} ({tracking_uri()})"]
