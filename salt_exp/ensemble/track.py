"""Logs an ensemble to MLflow (its run, and its logged pyfunc model) and registers it (alias ``champion``) with its
members pinned.

Replay-safe like a fold run: the run is tagged with a digest of its params (members, options, data); a rerun of a
``salt-exp ensemble`` that was killed after its run started continues that unfinished run, so the store ends with
one ensemble run, one logged model and one version, as after an uninterrupted command. A finished ensemble is never
continued: building it again is a new run and version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salt_exp import contract as C
from salt_exp.contract import EnsembleOOF, EnsembleVersion, Role, RunStatus, Tag
from salt_exp.ensemble.build import EnsembleResult, EnsembleSpec
from salt_exp.scoring import score_files
from salt_exp.tracking import RunTracker, set_model_alias, temp_dir


@dataclass(frozen=True)
class LoggedEnsemble:
    run_id: str
    version: str  # of the registered model contract.ensemble_model(study), alias champion
    lb: dict  # leaderboard scores (public/private) when the dataset has a solution.csv, else {}


def stored_oof(result: EnsembleResult) -> EnsembleOOF:
    """What ``ensemble/oof.npz`` holds: the ensemble's OOF output as analyses read it."""
    oof = result.oof
    return EnsembleOOF(ids=oof.ids, probs=np.concatenate([f.probs for f in oof.folds]),
                       threshold=np.concatenate([np.full(len(f.ids), f.threshold, np.float32) for f in oof.folds]),
                       fold=np.concatenate([np.full(len(f.ids), f.fold, np.int16) for f in oof.folds]),
                       pred=result.post_pred.astype(bool))


def _metrics(result: EnsembleResult, lb: dict) -> dict[str, float]:
    oof = result.oof
    metrics = {"oof_map": oof.score, "oof_best_single": oof.best_single, "oof_map_postprocessed": result.oof_post,
               "test_threshold": result.test_threshold}
    for f in oof.folds:
        metrics.update({f"fold{f.fold}_threshold": f.threshold, f"fold{f.fold}_oof_map": f.score})
    if result.waterfall is not None:
        metrics.update(result.waterfall.metrics())
        final = [s for s in result.waterfall.steps if s.chained and s.score is not None][-1]
        metrics.update({f"fold{k}_oof_map_final": v for k, v in final.folds.items()})  # after the rules, per fold
    for b in oof.bins:
        metrics[f"oof_err_share_{b['bin']}"] = b["err_share"]
        if b["count"]:
            metrics[f"oof_map_bin_{b['bin']}"] = b["mean_score"]
    for g in result.rule_gains:
        metrics[f"pp_gain_{g['rule'].replace('+', '_')}"] = g["gain"]
    metrics.update({f"lb_{split}": lb[split] for split in ("public", "private") if lb.get(split) is not None})
    return metrics


def _log_artifacts(tracker: RunTracker, result: EnsembleResult) -> None:
    members = [m for ms in result.selection.values() for m in ms] + result.full_fit
    tracker.log_json([m.member_row() for m in members], C.ENSEMBLE_MEMBERS)
    tracker.log_table({k: [b[k] for b in result.oof.bins] for k in result.oof.bins[0]}, C.ENSEMBLE_OOF_TABLE)
    if result.rule_gains:
        tracker.log_table({k: [g[k] for g in result.rule_gains] for k in result.rule_gains[0]}, C.ENSEMBLE_PP_TABLE)
    if result.waterfall is not None:
        from salt_exp.ensemble.waterfall import save_waterfall_png, table_columns

        rows = result.waterfall.rows()
        tracker.log_table(table_columns(rows), C.ENSEMBLE_WATERFALL_TABLE)  # shown in the UI's artifact view
        with temp_dir() as tmp:
            png = save_waterfall_png(rows, f"{tracker.run_id[:8]}: out-of-fold gain per step",
                                     Path(tmp) / Path(C.ENSEMBLE_WATERFALL_PNG).name)
            tracker.log_artifact(png, C.ENSEMBLE_DIR)
    if result.submission:
        tracker.log_artifact(result.submission, C.ENSEMBLE_DIR)
    with temp_dir() as tmp:
        path = C.write_ensemble_oof(Path(tmp) / Path(C.ENSEMBLE_OOF).name, stored_oof(result))
        tracker.log_artifact(path, C.ENSEMBLE_DIR)


def _log_model(tracker: RunTracker, spec: EnsembleSpec, result: EnsembleResult) -> str:
    """The ensemble as a pyfunc logged model of its run: its members' weights (copies: the model stands alone),
    the groups, threshold and rules (``ensemble.json``), the mosaic table and the labelled neighbours."""
    from salt_exp.serving.predictor import KNOWN_FILE, MOSAICS_FILE
    from salt_exp.serving.pyfunc import KNOWN_ARTIFACT, MEMBER_PREFIX, MOSAICS_ARTIFACT, SPEC_ARTIFACT, signature
    from salt_exp.tracking.models import code_file, log_pyfunc_model

    predictor = result.predictor
    names, artifacts, k = [], {}, 0
    for group in predictor.groups:
        names.append([])
        for member in group:
            names[-1].append(f"{MEMBER_PREFIX}{k}")
            artifacts[f"{MEMBER_PREFIX}{k}"] = member.path
            k += 1
    members = [m for g in result.groups.values() for m in g]
    params = {"study": spec.study, "threshold": result.test_threshold, "rules": ",".join(result.rules) or "none",
              "top_cycles": spec.top_k, "full_fit": spec.options.full_fit, "tta": "hflip",
              "members": ",".join(m.key for m in members)}
    params.update({f"{MEMBER_PREFIX}{i}": f"{m.key} fold {C.fold_label(m.fold)} {C.cycle_label(m.cycle)} val_map {m.val_map:.4f}"
                   + (f" ({m.model_id})" if m.model_id else "") for i, m in enumerate(members)})
    with temp_dir() as tmp:
        written = {p.name: p for p in predictor.save_context(Path(tmp), names)}
        artifacts[SPEC_ARTIFACT] = written["ensemble.json"]
        if MOSAICS_FILE in written:
            artifacts[MOSAICS_ARTIFACT] = written[MOSAICS_FILE]
        if KNOWN_FILE in written:
            artifacts[KNOWN_ARTIFACT] = written[KNOWN_FILE]
        return log_pyfunc_model(tracker.run_id, name=C.ENSEMBLE_LOGGED_NAME, key=C.ENSEMBLE_MODEL_KEY,
                                code=code_file("ensemble_model"), artifacts=artifacts, signature=signature("ensemble"),
                                model_type=C.ENSEMBLE_MODEL_TYPE, params=params, tags={C.Tag.STUDY: spec.study})


def _tracker(study: str, params: Mapping[str, Any]) -> RunTracker:
    """The unfinished ensemble run of these params (a killed command's), continued; else a new run."""
    from salt_exp.tracking import find_runs

    key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    found = find_runs(C.experiment_name(study),
                      f"tags.`{Tag.ROLE}` = '{Role.ENSEMBLE.value}' and tags.`{Tag.ENSEMBLE_KEY}` = '{key}'")
    for run in found:
        if run.status != RunStatus.FINISHED:
            print(f"[ensemble] continuing the unfinished ensemble run {run.run_id} ({run.status}: the same members "
                  "and options, a command that did not finish)", flush=True)
            return RunTracker.resume(run.run_id)
    return RunTracker.start(C.experiment_name(study), "ensemble", {**C.ensemble_run_tags(study), Tag.ENSEMBLE_KEY: key})


def log_ensemble(spec: EnsembleSpec, result: EnsembleResult, data_root: Path) -> LoggedEnsemble:
    """One ensemble run in ``salt/<study>``, registered as the champion version of ``salt-<study>-ensemble``: a
    logged pyfunc model (``mlflow.pyfunc.load_model("models:/salt-<study>-ensemble@champion")``)."""
    from salt_exp.tracking.models import log_model_metrics

    members = [m for ms in result.selection.values() for m in ms] + result.full_fit
    params = {"models": ",".join(spec.models), "top_k": spec.top_k, "threshold": spec.threshold,
              "postprocess": spec.postprocess, "rules_applied": ",".join(result.rules) or "none",
              "selection": spec.options.selection,
              "left_out": ",".join(m.key for m in result.left_out) or "none",
              "full_fit": spec.options.full_fit, "swa": spec.options.swa, "oof_tta": spec.options.oof_tta,
              "test_context": spec.options.test_context, "seam_max_cost": spec.options.seam_max_cost,
              "seams_cut": result.broken_seams,
              "full_fit_members": ",".join(m.key for m in result.full_fit) or "none",
              "data_root": str(data_root), "members": ",".join(m.key for m in members)}
    tracker = _tracker(spec.study, params)
    tracker.log_params(params)
    solution = data_root / "solution.csv"
    lb = score_files(result.submission, solution) if result.submission and solution.exists() else {}
    _log_artifacts(tracker, result)
    model_id = _log_model(tracker, spec, result)
    held = tracker.client.get_run(tracker.run_id).data.metrics  # a continued run logged some already: once each
    fresh = {k: v for k, v in _metrics(result, lb).items() if k not in held}
    log_model_metrics(tracker.run_id, model_id, fresh, 0)  # the run's metrics, shown on the model page
    model = C.ensemble_model(spec.study)
    record = EnsembleVersion(model=model, study=spec.study, ensemble_run=tracker.run_id,
                             members=tuple(m.key for m in members), oof_map=result.oof.score, rules=tuple(result.rules))
    version = tracker.register_version(model, C.ENSEMBLE_DIR, record.to_tags(), key_tag="ensemble_run",
                                       model_id=model_id)
    set_model_alias(model, C.CHAMPION, version)
    tracker.end(RunStatus.FINISHED)
    return LoggedEnsemble(tracker.run_id, version, lb)
