"""The ensemble waterfall on real data (issue 15), in resumable fold parts: what each ensemble step gains out of fold.

    .venv/bin/python benchmarks/bench_ensemble.py --data ../shared/tgs [--minutes 25] [--folds 0-4] [--max-parts N]
        [--study bq-cpu] [--results benchmarks/results/ensemble.json] [--report-only] [--docs]
    make bench-ensemble DATA=../shared/tgs

A *part* is one fold k: ``configs/cpu.yaml`` cross-validated on fold k at ``--minutes`` per fold (the very
fold run ``bench_quality.py``'s ``cpu`` part trains, in the same study ``bq-cpu``: when that store already
holds fold k of the same recipe, nothing is trained again; when it trains here, the quality part is saved
to quality.json too), then ``salt-exp ensemble --study bq-cpu --folds k`` on it: its waterfall (best
single @0.5, threshold search, top-2 snapshots, SWA when present, h-flip TTA, each rule, test tiles as
neighbours, the jigsaw seam check) scored on fold k's validation tiles. Every OOF step of an ensemble
reads fold k's members only, so a fold's rows are what a 5-fold ensemble's fold k rows would be, except
that the test tiles read as neighbours are predicted by fold k's members only (a 5-fold ensemble averages
all folds there; the note says so). A finished part is appended to the results file (temp file + rename);
rerun the command to continue. The report (stdout, ``--docs``: docs/BENCHMARKS.md "Ensemble waterfall")
aggregates the folds: each step's tile-weighted OOF score, its mean gain and the gain's spread over folds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_quality as bq  # noqa: E402  (the same folds, recipe keys and machine facts)

RESULTS = REPO / "benchmarks" / "results" / "ensemble.json"
BEGIN, END = "<!-- ensemble:begin -->", "<!-- ensemble:end -->"
PIPELINE = "cpu"


def load_parts(path: Path) -> list[dict]:
    return bq.read_parts(path, "bench_ensemble")


def save_part(path: Path, part: dict) -> None:
    bq.write_part(path, part, lambda p: (p["fold"], p["minutes"], p["recipe"]), "bench_ensemble")


def trained_folds(study: str, config_hash: str) -> set[int]:
    """Folds of ``study`` whose registered snapshots come from a fold run of this recipe."""
    from salt_exp import contract as C
    from salt_exp.tracking import run_summary, snapshot_versions

    try:
        versions = snapshot_versions(C.snapshot_model(study))
    except Exception:  # noqa: BLE001 - no such model yet: nothing trained
        return set()
    return {v.fold for v in versions if not v.full_fit and run_summary(v.run_id).tags.get(C.Tag.CONFIG_HASH) == config_hash}


def run_part(data: Path, fold: int, minutes: float, study: str, results: Path, quality: Path) -> None:
    from salt_exp.config import config_hash
    from salt_exp.ensemble.build import EnsembleSpec
    from salt_exp.ensemble.options import EnsembleOptions
    from salt_exp.pipeline import ensemble_study

    cfg = bq.harness_config(PIPELINE, "", data, minutes)
    trained_here = fold not in trained_folds(study, config_hash(cfg))
    if trained_here:  # bench_quality's cpu part: trains the fold run and records its quality part too
        bq.run_part(PIPELINE, "", data, fold, minutes, quality)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        spec = EnsembleSpec.for_study(study, options=EnsembleOptions(), folds=(fold,), out=str(Path(tmp) / "sub.csv"))
        outcome = ensemble_study(spec)
    result = outcome.result
    steps = [{"step": s.name, "label": s.label, "score": s.folds.get(fold) if s.score is not None else None,
              "note": s.note, "chained": s.chained} for s in result.waterfall.steps]
    part = {"fold": fold, "minutes": minutes, "recipe": bq.recipe_of(PIPELINE, "", data, minutes), "study": study,
            "n_tiles": int(len(result.oof.ids)), "steps": steps, "rules": result.rules,
            "rule_gains": result.rule_gains, "seams_cut": result.broken_seams,
            "members": [m.key for ms in result.selection.values() for m in ms],
            "ensemble_run": outcome.logged.run_id, "ensemble_s": round(time.perf_counter() - t0, 1),
            "trained_here": trained_here, "machine": bq.machine(), "commit": bq.git_commit(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    save_part(results, part)
    print(f"[bench-ensemble] fold {fold}: " + ", ".join(f"{s['step']} {s['score']:.4f}" for s in steps
                                                         if s["score"] is not None), flush=True)


def report(parts: list[dict], minutes: float, recipe: str, folds: list[int]) -> str:
    fresh = {p["fold"]: p for p in parts if p["minutes"] == minutes and p["recipe"] == recipe and p["fold"] in folds}
    done = sorted(fresh)
    lines = [f"`configs/cpu.yaml` at {minutes:g} min per fold on real data; folds with an ensemble part: "
             f"{done or 'none yet'}", ""]
    if not done:
        return "\n".join(lines)
    order: list[str] = []  # every fold's steps in its own order: a step only some folds have (a rule applied
    for f in done:         # there) goes right after the step it followed in them, not at the end of the chain
        before = None
        for s in fresh[f]["steps"]:
            if s["score"] is None:
                continue
            if s["step"] not in order:
                order.insert(order.index(before) + 1 if before in order else len(order), s["step"])
            before = s["step"]
    labels = {s["step"]: s["label"] for f in done for s in fresh[f]["steps"]}
    lines += ["| step | " + " | ".join(f"fold {f}" for f in done) + " | OOF mAP | gain | gain sd over folds |",
              "|---|" + "---|" * (len(done) + 3)]
    chained = {s["step"]: s["chained"] for f in done for s in fresh[f]["steps"]}
    prev: dict[int, float] = {}
    for name in order:
        per = {f: next((s["score"] for s in fresh[f]["steps"] if s["step"] == name), None) for f in done}
        if chained[name]:  # a step a fold does not have (e.g. no rule applied there) carries its previous score
            per = {f: (v if v is not None else prev.get(f)) for f, v in per.items()}
        shown = [f for f in done if per[f] is not None]
        if not shown or (chained[name] and len(shown) < len(done)):
            continue
        n = {f: fresh[f]["n_tiles"] for f in shown}
        score = sum(per[f] * n[f] for f in shown) / sum(n.values())
        gains = [per[f] - prev[f] for f in shown if f in prev]
        gain = f"{statistics.fmean(gains):+.4f}" if gains else "-"
        sd = f"{statistics.stdev(gains):.4f}" if len(gains) > 1 else "-"
        label = labels[name]
        lines.append(f"| {label} | " + " | ".join(f"{per[f]:.4f}" if per[f] is not None else "-" for f in done)
                     + f" | {score:.4f} | {gain} | {sd} |")
        if chained[name]:
            prev = per
    lines += ["", "Rows in parentheses were tried and not taken: their gain is against the row above, and the chain "
              "goes on from that row."]
    first = {f: next(s["score"] for s in fresh[f]["steps"] if s["score"] is not None) for f in done}
    total = [prev[f] - first[f] for f in done]
    lines += ["", f"Final minus best single snapshot @0.5: {statistics.fmean(total):+.4f} (per fold "
              + ", ".join(f"{f}: {t:+.4f}" for f, t in zip(done, total, strict=True)) + ")", "",
              "| fold | rules applied | seams cut | members | ensemble s | trained here | machine | commit | conditions |",
              "|---|---|---|---|---|---|---|---|---|"]
    for f in done:
        p = fresh[f]
        lines.append(f"| {f} | {', '.join(p['rules']) or 'none'} | {p['seams_cut']} | {len(p['members'])} | "
                     f"{p['ensemble_s']:.0f} | {p['trained_here']} | {p['machine']} | {p['commit']} | "
                     f"{p.get('conditions') or 'uncontended'} |")
    return "\n".join(lines)


def write_docs(text: str, command: str) -> None:
    bq.write_docs_block(BEGIN, END, "Ensemble waterfall on real data (bench_ensemble.py)", text, command)


def main(argv: list[str] | None = None) -> int:
    ap = bq.part_parser(__doc__, RESULTS)
    ap.add_argument("--study", default="bq-cpu", help="the study of the fold runs (bench_quality's cpu study)")
    ap.add_argument("--quality-results", default=str(bq.RESULTS))
    ap.add_argument("--part", type=int, default=None, help=argparse.SUPPRESS)  # internal: one fold in a child process
    args = ap.parse_args(argv)
    data, results = bq.data_and_results(args)
    from salt_exp.cv import parse_folds
    from salt_exp.errors import SaltError

    try:
        folds = parse_folds(args.folds, 5)
        if args.part is not None:
            run_part(data, args.part, args.minutes, args.study, results, Path(args.quality_results).resolve())
            return 0
        recipe = bq.recipe_of(PIPELINE, "", data, args.minutes)
    except SaltError as exc:
        sys.exit(f"bench_ensemble: {exc}")
    done = {p["fold"] for p in load_parts(results) if p["minutes"] == args.minutes and p["recipe"] == recipe}
    todo = [f for f in folds if f not in done][: args.max_parts]
    if not args.report_only:
        rc = bq.run_children("bench-ensemble", __file__, [
            (f"fold {fold}", ["--part", str(fold), "--data", str(data), "--minutes", str(args.minutes), "--study",
                              args.study, "--results", str(results), "--quality-results", args.quality_results])
            for fold in todo])
        if rc:
            return rc
    text = report(load_parts(results), args.minutes, recipe, folds)
    print(text)
    if args.docs:
        write_docs(text, "make bench-ensemble DATA=../shared/tgs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
