"""Mosaic-context model against mosaic post-processing on real data (issue 17), in resumable parts.

    .venv/bin/python benchmarks/bench_context.py --data ../shared/tgs [--folds 0-4] [--pipelines plain,image]
        [--epochs 8] [--results benchmarks/results/context.json] [--report-only] [--docs]
    make bench-context DATA=../shared/tgs

A *part* is one (pipeline, fold): ``configs/cpu.yaml`` on mosaic-grouped folds (``data.folds_scheme=mosaic``: a
mosaic's train tiles share one fold, so no neighbour crosses the split) for a fixed ``--epochs`` (2 cycles), then
``salt-exp ensemble --study ctx-<pipeline> --folds k`` on it (greedy snapshots, threshold search, h-flip TTA, the
mosaic rules the harness picks on OOF, the test tiles as the rules' neighbours). Pipelines:

- ``plain``: the tile padded 101 -> 128 (replicate), as every run before;
- ``image``: ``context.mode=image``: the padding holds the neighbouring tiles' pixels where mosaics.csv places
  one, plus a validity plane (its first-conv weights start at zero: the model starts as plain). Variants (not in
  the default ``--pipelines``): ``image-random`` (the plane's weights drawn at random, as the first context runs
  did), ``image-novalid`` (no validity plane), ``image-drop`` (``context.dropout=0.5``: half the training
  samples come padded alone, so the model keeps working without neighbours) and ``image-wide``
  (``padding.size=192``: 45-46 px of each neighbour instead of 13-14, at 2.25x the pixels per step, so the same
  epochs are more compute: the one variant that is not the same budget). Otherwise the same canvas size, so the same
  compute per step: a fixed number of epochs is the same budget in steps and (within the measurement noise of this
  machine) in wall time, and a contended machine cannot change the comparison, only its duration;
- ``plain-s2``: the plain model from seed 43 (folds unchanged: ``data.folds_seed``), the report's seed-noise row.

Each part stores per-tile OOF scores of the ensemble before and after the rules, so the report can split them
any way: overall, tiles inside vs outside a mosaic, and by the truth's mask type (empty; vertical: the bottom 30
rows equal, neither empty nor full, the shape the vertical rule continues; cap: the last row fully salt but the
tile not full, the cap rule's source; other). The fold run is the harness's own (``salt-exp cv``, resumable:
a finished fold is reused, not trained again). A finished part is written to the results file (temp + rename).

The verdict rows pair the two pipelines tile by tile: per fold, (context + rules) - (plain + rules) inside mosaics
and overall, the folds' mean and sd, and a bootstrap interval over the pooled tiles inside mosaics (the tiles'
sampling noise only; the folds' spread and the seed row carry the retraining noise).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_quality as bq  # noqa: E402  (machine facts, docs path)

RESULTS = REPO / "benchmarks" / "results" / "context.json"
BEGIN, END = "<!-- context:begin -->", "<!-- context:end -->"
PIPELINES = {"plain": [], "image": ["context.mode=image"],
             # the plain model again from another seed: how far a reseeded fold run moves (the noise to beat)
             "plain-s2": ["seed=43"],
             # variants of the context model: the validity plane's weights drawn at random (the first runs), no plane
             "image-random": ["context.mode=image", "context.validity_init=random"],
             "image-novalid": ["context.mode=image", "context.validity=false"],
             # half the training samples without their neighbours: the model keeps the plain input's skill
             "image-drop": ["context.mode=image", "context.dropout=0.5"],
             # a wider window: 45-46 px of each neighbour instead of 13-14 (2.25x the pixels per step, same epochs)
             "image-wide": ["context.mode=image", "padding.size=192"]}
LABELS = {"plain": "plain", "image": "context", "plain-s2": "plain, seed 43", "image-random": "context, plane drawn at random",
          "image-novalid": "context, no validity plane", "image-drop": "context, dropout 0.5",
          "image-wide": "context, 192 px canvas"}
TYPES = ("empty", "vertical", "cap", "other")


def overrides(pipeline: str, data: Path, epochs: int) -> list[str]:
    if epochs % 2:
        raise SystemExit(f"--epochs {epochs}: must be even (2 cycles of epochs / 2)")
    return [f"data.root={data}", "data.folds_scheme=mosaic", "schedule.budget_minutes=null",
            f"schedule.cycle_epochs={epochs // 2}", *PIPELINES[pipeline]]


def recipe_of(pipeline: str, data: Path, epochs: int) -> str:
    from dataclasses import replace

    from salt_exp.config import config_hash, load_config

    cfg = load_config(REPO / "configs" / "cpu.yaml", overrides(pipeline, data, epochs))
    return config_hash(replace(cfg, data=replace(cfg.data, root="<data>")))


def load_parts(path: Path) -> list[dict]:
    return bq.read_parts(path, "bench_context")


def save_part(path: Path, part: dict) -> None:
    bq.write_part(path, part, lambda p: (p["pipeline"], p["fold"], p["recipe"]), "bench_context")


def run_part(pipeline: str, data: Path, fold: int, epochs: int, results: Path) -> None:
    from salt_exp.ensemble.build import EnsembleSpec
    from salt_exp.ensemble.options import EnsembleOptions
    from salt_exp.metrics import image_scores
    from salt_exp.pipeline import ensemble_study

    study = f"ctx-{pipeline}"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "salt_exp", "cv", str(REPO / "configs" / "cpu.yaml"), "--study", study,
           "--folds", str(fold)] + [a for o in overrides(pipeline, data, epochs) for a in ("--set", o)]
    subprocess.run(cmd, check=True)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-context-") as tmp:
        spec = EnsembleSpec.for_study(study, options=EnsembleOptions(), folds=(fold,), out=str(Path(tmp) / "sub.csv"))
        outcome = ensemble_study(spec)
    r = outcome.result
    from salt_exp.data.kaggle import load_kaggle

    train = load_kaggle(data).train
    truth = train.masks[train.position(r.oof.ids.tolist())]
    steps = [{"step": s.name, "score": s.folds.get(fold) if s.score is not None else None, "chained": s.chained}
             for s in r.waterfall.steps]
    part = {"pipeline": pipeline, "fold": fold, "epochs": epochs, "recipe": recipe_of(pipeline, data, epochs),
            "study": study, "ids": r.oof.ids.astype(str).tolist(),
            "scores": [round(float(v), 4) for v in image_scores(r.oof.pred, truth)],
            "scores_rules": [round(float(v), 4) for v in image_scores(r.post_pred, truth)],
            "rules": r.rules, "steps": steps, "members": [m.key for ms in r.selection.values() for m in ms],
            "ensemble_run": outcome.logged.run_id, "wall_s": round(time.perf_counter() - t0, 1),
            "fold_run_s": round(train_s, 1), "machine": bq.machine(), "commit": bq.git_commit(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    save_part(results, part)
    print(f"[bench-context] {pipeline} fold {fold}: OOF {np.mean(part['scores']):.4f}, with rules "
          f"{np.mean(part['scores_rules']):.4f} ({', '.join(r.rules) or 'no rule'})", flush=True)


def mask_type(mask: np.ndarray) -> str:
    from salt_exp.ensemble.postprocess import vertical_row

    if not mask.any():
        return "empty"
    if vertical_row(mask) is not None:
        return "vertical"
    if mask[-1].all() and not mask.all():
        return "cap"
    return "other"


def scores_by_id(by: dict, pipeline: str, folds: list[int], key: str) -> dict[str, float]:
    """Tile id -> per-tile score (``key``: "scores" or "scores_rules") of ``pipeline``'s parts on ``folds``."""
    return dict(zip((t for f in folds for t in by[(pipeline, f)]["ids"]),
                    (v for f in folds for v in by[(pipeline, f)][key]), strict=True))


def report(parts: list[dict], data: Path, folds: list[int]) -> str:
    from salt_exp.data.kaggle import load_kaggle

    d = load_kaggle(data)
    placed = set(d.mosaics["id"].astype(str)) if d.mosaics is not None else set()
    kind = {t: mask_type(m) for t, m in zip(d.train.ids.astype(str), d.train.masks, strict=True)}
    by = {(p["pipeline"], p["fold"]): p for p in parts}
    common = [f for f in folds if all((pl, f) in by for pl in ("plain", "image"))]
    if not common:
        return "No fold has both pipelines yet."
    shown = [pl for pl in PIPELINES if all((pl, f) in by for f in common)]  # variants with a part on every such fold
    ids = [t for f in common for t in by[("plain", f)]["ids"]]
    inside = np.array([t in placed for t in ids])
    types = np.array([kind[t] for t in ids])
    rows = []
    for pl in shown:
        for rules in (False, True):
            key = "scores_rules" if rules else "scores"
            score = scores_by_id(by, pl, common, key)
            s = np.array([score[t] for t in ids])
            label = LABELS[pl] + (" + rules" if rules else "")
            rules_used = "; ".join(f"fold {f}: {', '.join(by[(pl, f)]['rules']) or 'none'}" for f in common)
            cells = [s.mean(), s[inside].mean(), s[~inside].mean()]
            cells += [s[inside & (types == k)].mean() if (inside & (types == k)).any() else float("nan") for k in TYPES]
            rows.append((label, cells, rules_used if rules else ""))
    n_in = int(inside.sum())
    head = (f"| variant | all ({len(ids)}) | inside mosaics ({n_in}) | outside ({len(ids) - n_in}) | "
            + " | ".join(f"inside, {k} ({int((inside & (types == k)).sum())})" for k in TYPES) + " | rules applied |")
    lines = [f"Folds with both pipelines: {common} (mosaic-grouped folds, `configs/cpu.yaml`, "
             f"{by[('plain', common[0])]['epochs']} epochs per fold run; OOF mAP of each fold's ensemble)", "",
             head, "|" + "---|" * (len(TYPES) + 5)]
    for label, cells, used in rows:
        lines.append(f"| {label} | " + " | ".join(f"{c:.4f}" for c in cells) + f" | {used} |")
    base = {label: cells for label, cells, _ in rows}
    gain = [a - b for a, b in zip(base["context"], base["plain + rules"], strict=True)]
    gain_r = [a - b for a, b in zip(base["context + rules"], base["plain + rules"], strict=True)]
    lines += ["| context - (plain + rules) | " + " | ".join(f"{g:+.4f}" for g in gain) + " | |",
              "| (context + rules) - (plain + rules) | " + " | ".join(f"{g:+.4f}" for g in gain_r) + " | |"]
    if "plain, seed 43" in base:  # the seed noise: what the same pipeline moves when only its seed changes
        noise = [a - b for a, b in zip(base["plain, seed 43"], base["plain"], strict=True)]
        lines.append("| (plain, seed 43) - plain: seed noise | " + " | ".join(f"{g:+.4f}" for g in noise) + " | |")
    lines += ["", *verdict(by, common, placed), *partial_variants(by, common, placed, shown)]
    lines += ["",
              "| pipeline | fold | best single @0.5 | ensemble | + rules | members | fold run + ensemble s | machine | commit |",
              "|---|---|---|---|---|---|---|---|---|"]
    for f in common:
        for pl in (pl for pl in PIPELINES if (pl, f) in by):
            p = by[(pl, f)]
            single = next((s["score"] for s in p["steps"] if s["score"] is not None), float("nan"))
            lines.append(f"| {pl} | {f} | {single:.4f} | {np.mean(p['scores']):.4f} | {np.mean(p['scores_rules']):.4f} | "
                         f"{', '.join(p['members'])} | {p['wall_s']:.0f} | {p['machine']} | {p['commit']} |")
    return "\n".join(lines)


def paired_interval(diff: np.ndarray, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of paired per-tile differences (tiles resampled).

    It measures how much the tiles drawn decide the margin, not how much a retrained model would move it: the
    per-fold spread (and the plain-s2 seed row) speaks to that."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def verdict(by: dict, common: list[int], placed: set[str]) -> list[str]:
    """Per fold, (context + rules) - (plain + rules) overall and inside mosaics; the folds' mean and sd; and the
    pooled tiles' bootstrap interval: the evidence the issue asks for, one fold at a time."""
    lines = ["| fold | tiles inside | plain + rules, inside | context + rules, inside | difference, inside | "
             "difference, all tiles |", "|---|---|---|---|---|---|"]
    d_in, d_all, pooled = [], [], []
    for f in common:
        plain, ctx = by[("plain", f)], by[("image", f)]
        if plain["ids"] != ctx["ids"]:
            raise SystemExit(f"fold {f}: plain and image parts hold different tiles (folds changed between them)")
        inside = np.array([t in placed for t in plain["ids"]])
        a, b = np.array(plain["scores_rules"]), np.array(ctx["scores_rules"])
        d_in.append(float((b - a)[inside].mean()))
        d_all.append(float((b - a).mean()))
        pooled.append((b - a)[inside])
        lines.append(f"| {f} | {int(inside.sum())} | {a[inside].mean():.4f} | {b[inside].mean():.4f} | "
                     f"{d_in[-1]:+.4f} | {d_all[-1]:+.4f} |")
    def mean_sd(v: list[float]) -> str:
        return f"{np.mean(v):+.4f}" + (f" (sd {np.std(v, ddof=1):.4f})" if len(v) > 1 else "")

    lines.append(f"| mean over {len(common)} folds | | | | {mean_sd(d_in)} | {mean_sd(d_all)} |")
    diff = np.concatenate(pooled)
    lo, hi = paired_interval(diff)
    wins = sum(d > 0 for d in d_in)
    lines += ["", f"Inside mosaics, context + rules is ahead of plain + rules on {wins} of {len(common)} folds; "
              f"over the {len(diff)} tiles pooled, the mean difference is {diff.mean():+.4f}, 95% bootstrap interval "
              f"[{lo:+.4f}, {hi:+.4f}] (tiles resampled; it does not include retraining noise, see the seed row); "
              f"{int((diff > 0).sum())} tiles gain, {int((diff < 0).sum())} lose, {int((diff == 0).sum())} tie."]
    return lines


def partial_variants(by: dict, common: list[int], placed: set[str], shown: list[str]) -> list[str]:
    """The variants measured on some of the folds only (the seed row, the first context runs), each against
    plain + rules on its own folds: they leave the main table once a fold lacks them, not the evidence."""
    rows = []
    for pl in PIPELINES:
        folds = [f for f in common if (pl, f) in by]
        if pl in shown or pl == "plain" or not folds:
            continue
        ids = [t for f in folds for t in by[("plain", f)]["ids"]]
        inside = np.array([t in placed for t in ids])
        base = np.concatenate([by[("plain", f)]["scores_rules"] for f in folds])
        for key, suffix in (("scores", ""), ("scores_rules", " + rules")):
            score = scores_by_id(by, pl, folds, key)
            d = np.array([score[t] for t in ids]) - base
            rows.append(f"| {LABELS[pl]}{suffix} | {', '.join(map(str, folds))} | {d.mean():+.4f} | "
                        f"{d[inside].mean():+.4f} | {d[~inside].mean():+.4f} |")
    if not rows:
        return []
    return ["", "Variants measured on fewer folds, each minus plain + rules on the same folds (tile for tile; "
            "`plain, seed 43` minus plain + rules is the seed noise):", "",
            "| variant | folds | all | inside mosaics | outside |", "|---|---|---|---|---|", *rows]


def write_docs(text: str, command: str) -> None:
    bq.write_docs_block(BEGIN, END, "Mosaic-context model against mosaic post-processing (bench_context.py, issue 17)", text, command)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "tgs"))
    ap.add_argument("--folds", default="0-4")
    ap.add_argument("--pipelines", default="plain,image")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--max-parts", type=int, default=None)
    ap.add_argument("--docs", action="store_true")
    args = ap.parse_args(argv)
    for key in ("HF_HUB_OFFLINE", "NO_ALBUMENTATIONS_UPDATE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    # data.root goes into the config hash as given: the same --data string finds the same fold runs again
    data, results = Path(args.data), Path(args.results).resolve()
    if not (data / "mosaics.csv").exists():
        sys.exit(f"--data {data}: no mosaics.csv (expected the Kaggle TGS layout with the mosaic table)")
    from salt_exp.cv import parse_folds
    from salt_exp.errors import SaltError

    pipelines = [p for p in args.pipelines.split(",") if p]
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        sys.exit(f"--pipelines: unknown {unknown[0]!r}; valid: {', '.join(PIPELINES)}")
    try:
        folds = parse_folds(args.folds, 5)
        recipes = {p: recipe_of(p, data, args.epochs) for p in PIPELINES}
    except SaltError as exc:
        sys.exit(f"bench_context: {exc}")
    parts = [p for p in load_parts(results) if p["recipe"] == recipes.get(p["pipeline"])]
    done = {(p["pipeline"], p["fold"]) for p in parts}
    todo = [(pl, f) for f in folds for pl in pipelines if (pl, f) not in done][: args.max_parts]
    if not args.report_only:
        for pl, f in todo:
            print(f"[bench-context] {pl} fold {f} ...", flush=True)
            run_part(pl, data, f, args.epochs, results)
        parts = [p for p in load_parts(results) if p["recipe"] == recipes.get(p["pipeline"])]
    text = report(parts, data, folds)
    print(text)
    if args.docs:
        write_docs(text, "make bench-context DATA=../shared/tgs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
