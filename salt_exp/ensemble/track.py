"""Logs an ensemble to MLflow and registers it (alias ``champion``) with its members pinned."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from salt_exp.ensemble.build import EnsembleResult, EnsembleSpec
from salt_exp.scoring import score_files
from salt_exp.tracking import RunTracker, set_model_alias

OOF_FILE = "oof.npz"  # logged as ensemble/oof.npz: what the report and the mosaic renders read


def save_oof(result: EnsembleResult, path: Path) -> Path:
    """The ensemble's out-of-fold output: ids, mean probabilities (float16), the threshold each tile got,
    its fold and the post-processed masks (bit-packed rows), so that analyses never recompute it."""
    oof = result.oof
    np.savez_compressed(
        path, ids=oof.ids, probs=np.concatenate([f.probs for f in oof.folds]).astype(np.float16),
        threshold=np.concatenate([np.full(len(f.ids), f.threshold, np.float32) for f in oof.folds]),
        fold=np.concatenate([np.full(len(f.ids), f.fold, np.int16) for f in oof.folds]),
        pred=np.packbits(result.post_pred.astype(bool), axis=-1))
    return path


def log_ensemble(spec: EnsembleSpec, result: EnsembleResult, data_root: Path) -> tuple[str, str, dict]:
    """(run_id, registered version, leaderboard scores or {}) of the logged ensemble."""
    members = [m for ms in result.selection.values() for m in ms]
    tracker = RunTracker.start(f"salt/{spec.study}", "ensemble", {"salt.role": "ensemble", "salt.study": spec.study})
    tracker.log_params({"models": ",".join(spec.models), "top_k": spec.top_k, "threshold": spec.threshold,
                        "postprocess": spec.postprocess, "rules_applied": ",".join(result.rules) or "none",
                        "data_root": str(data_root), "members": ",".join(m.key for m in members)})
    oof = result.oof
    metrics = {"oof_map": oof.score, "oof_best_single": oof.best_single, "oof_map_postprocessed": result.oof_post,
               "test_threshold": result.test_threshold}
    for f in oof.folds:
        metrics.update({f"fold{f.fold}_threshold": f.threshold, f"fold{f.fold}_oof_map": f.score})
    for b in oof.bins:
        metrics[f"oof_err_share_{b['bin']}"] = b["err_share"]
        if b["count"]:
            metrics[f"oof_map_bin_{b['bin']}"] = b["mean_score"]
    for g in result.rule_gains:
        metrics[f"pp_gain_{g['rule'].replace('+', '_')}"] = g["gain"]
    lb = score_files(result.submission, data_root / "solution.csv") if result.submission and (data_root / "solution.csv").exists() else {}
    for split in ("public", "private"):
        if lb.get(split) is not None:
            metrics[f"lb_{split}"] = lb[split]
    tracker.log_metrics(metrics, 0)
    tracker.log_json([{"key": m.key, "run_id": m.run_id, "fold": m.fold, "cycle": m.cycle, "val_map": m.val_map,
                       "encoder": m.encoder, "trial": m.trial} for m in members], "ensemble/members.json")
    tracker.log_table({k: [b[k] for b in oof.bins] for k in oof.bins[0]}, "oof_coverage_bins.json")
    if result.rule_gains:
        tracker.log_table({k: [g[k] for g in result.rule_gains] for k in result.rule_gains[0]}, "postprocess_gains.json")
    if result.submission:
        tracker.log_artifact(result.submission, "ensemble")
    with tempfile.TemporaryDirectory(prefix="salt-exp-") as tmp:
        tracker.log_artifact(save_oof(result, Path(tmp) / OOF_FILE), "ensemble")
    version = tracker.register_version(f"salt-{spec.study}-ensemble", "ensemble",
                                       {"study": spec.study, "members": json.dumps([m.key for m in members]),
                                        "oof_map": f"{oof.score:.6f}", "rules": ",".join(result.rules) or "none",
                                        "ensemble_run": tracker.run_id}, key_tag="ensemble_run")
    set_model_alias(f"salt-{spec.study}-ensemble", "champion", version)
    tracker.end("FINISHED")
    return tracker.run_id, version, lb
