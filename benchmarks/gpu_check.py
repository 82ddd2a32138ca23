"""Checks and packing for ``benchmarks/gpu_protocol.sh``, read back from the protocol's MLflow store.

    python3 benchmarks/gpu_check.py smoke STUDY        the smoke fold run: FINISHED, finite losses, fp16 on CUDA,
                                                       the LR curve and GPU system metrics logged (exit 1 if not)
    python3 benchmarks/gpu_check.py pack STUDY OUT     OUT/results.json (steps, smoke, throughput, quality: cv_map,
                                                       OOF bins, budget plan) and OUT/mlflow.db.gz (no weights)
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _runs(study: str, role: str) -> list:
    from salt_exp.contract import Tag, experiment_name
    from salt_exp.tracking import find_runs

    return find_runs(experiment_name(study), f"tags.`{Tag.ROLE}` = '{role}'")


def smoke(study: str) -> dict:
    import torch
    from mlflow.tracking import MlflowClient

    from salt_exp.stores import tracking_uri

    (run,) = _runs(study, "fold")[:1]
    history = MlflowClient(tracking_uri()).get_metric_history(run.run_id, "train_loss")
    facts = {"run_id": run.run_id, "status": run.status, "precision": run.tags.get("salt.precision"),
             "train_loss": [m.value for m in history], "lr_find_suggestion": run.metrics.get("lr_find_suggestion"),
             "gpu_metrics": sorted(k for k in run.metrics if k.startswith("system/gpu")),
             "train_images_per_s": run.metrics.get("train_images_per_s"), "cuda": torch.cuda.is_available()}
    problems = []
    if run.status != "FINISHED":
        problems.append(f"run {run.run_id} is {run.status}")
    if not history or not all(math.isfinite(v) for v in facts["train_loss"]):
        problems.append(f"train_loss not finite: {facts['train_loss']}")
    if facts["cuda"] and facts["precision"] != "fp16":
        problems.append(f"trained in {facts['precision']}, expected fp16 AMP on CUDA")
    if facts["cuda"] and not facts["gpu_metrics"]:
        problems.append("no system/gpu_* metrics: nvml not read")
    facts["problems"] = problems
    print(json.dumps(facts, indent=1))
    return facts


def quality(study: str) -> dict:
    runs = _runs(study, "cv")
    if not runs:
        return {"problem": f"no cv run in salt/{study}"}
    cv = runs[0]
    folds = _runs(study, "fold")
    fold = folds[0] if folds else None
    keep = ("budget_minutes", "planned_epochs", "planned_steps", "done_epochs", "done_steps", "budget_used_s",
            "best_val_map", "train_images_per_s")
    return {"cv_run": cv.run_id, "status": cv.tags.get("salt.status"),
            **{k: v for k, v in cv.metrics.items() if k.startswith(("cv_map", "oof_", "fold0"))},
            "fold_run": {k: fold.metrics.get(k) for k in keep} if fold else None,
            "precision": fold.tags.get("salt.precision") if fold else None}


def pack(study: str, out: Path) -> dict:
    from salt_exp.stores import sqlite_path, tracking_uri

    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()] \
        if (out / "steps.jsonl").exists() else []
    throughput = json.loads((out / "throughput.json").read_text()) if (out / "throughput.json").exists() else None
    results = {"steps": steps, "throughput": throughput, "quality": quality(study)}
    try:
        results["smoke"] = smoke("gpu-smoke")
    except Exception as exc:  # noqa: BLE001 - report what is there
        results["smoke"] = {"problem": str(exc)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    db = sqlite_path(tracking_uri())
    if db is not None and db.exists():
        with open(db, "rb") as src, gzip.open(out / "mlflow.db.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    print(json.dumps(results["quality"], indent=1))
    return results


def main(argv: list[str]) -> int:
    if argv[:1] == ["smoke"] and len(argv) == 2:
        return 1 if smoke(argv[1])["problems"] else 0
    if argv[:1] == ["pack"] and len(argv) == 3:
        pack(argv[1], Path(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
