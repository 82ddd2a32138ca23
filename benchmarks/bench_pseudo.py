"""Pseudo-labelling rounds on real data (issue 15), in resumable (variant, fold) parts: does a round pay out of fold?

    .venv/bin/python benchmarks/bench_pseudo.py --data ../shared/tgs [--minutes 25] [--folds 0-4]
        [--variants warm-bal,warm-none] [--results benchmarks/results/pseudo.json] [--report-only | --audit] [--docs]
    make bench-pseudo DATA=../shared/tgs [FOLDS=0-1] [VARIANTS=warm-bal,warm-none]

A *part* is one fold k and one confidence variant:
1. the source: ``configs/cpu.yaml`` on fold k at ``--minutes`` (the fold run of bench_quality's ``cpu`` part, in the
   same study ``bq-cpu``; trained here when this store lacks it, its quality figure printed, not saved: the
   quality table keeps the parts it has);
2. its ensemble on fold k (``salt-exp ensemble --study bq-cpu --folds k``, made once per fold and reused by every
   variant): the labels' source and the figure to beat;
3. ``salt-exp pseudo`` from that ensemble version, fold k only, into a study of its own (``bp-<variant>-f<k>``),
   the round's config the source's best member's plus the variant's ``pseudo.*`` overrides, at the same budget;
4. the round's ensemble on fold k, whose waterfall ends with ``pseudo-labels vs`` the source ensemble: the gain.
A warm-started variant (``pseudo.warm_start``) trains on top of the source's fold member, so its gain holds the extra
training too; its control variant (``CONTROLS``: the same with ``pseudo.share=0``) measures that, and the report
gives the round's ensemble minus the control's: what the pseudo tiles themselves add.
The gain compares two ensembles built the same way, each from one 25-minute fold run; the round trained on
labels its source made, so it had that run's knowledge besides its own budget. A finished part is appended to
the results file (temp file + rename); rerun the command to continue. The report (stdout, ``--docs``:
docs/BENCHMARKS.md "Pseudo-labelling rounds") gives per variant each fold's source and round OOF, the gain and
its spread over folds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_ensemble as be  # noqa: E402  (the source fold runs and their study)
import bench_quality as bq  # noqa: E402  (the same folds, recipe keys and machine facts)

RESULTS = REPO / "benchmarks" / "results" / "pseudo.json"
BEGIN, END = "<!-- pseudo:begin -->", "<!-- pseudo:end -->"
SOURCE_STUDY = "bq-cpu"
# the first real round's settings (a Lovasz-trained source: its probabilities crowd near 0.27 / 0.73)
BAND = ["pseudo.pixel_low=0.3", "pseudo.pixel_high=0.7", "pseudo.empty_max_prob=0.4"]
VARIANTS = {
    "band": [*BAND, "pseudo.min_confident_pixels=0.9", "pseudo.share=0.3"],  # the first measured round, again
    # the band's pixels out of the loss, many more salt tiles kept, pseudo tiles in the BCE + Dice cycle only
    "ignore-c1": [*BAND, "pseudo.min_confident_pixels=0.5", "pseudo.ignore_band=true", "pseudo.cycles=1",
                  "pseudo.share=0.3"],
    "ignore-c1-share15": [*BAND, "pseudo.min_confident_pixels=0.5", "pseudo.ignore_band=true", "pseudo.cycles=1",
                          "pseudo.share=0.15"],
    # ignore-c1 with the kept empty tiles capped at the train tiles' empty share (0.38 on ../shared/tgs): ignore-c1
    # kept 3512 empty beside 846 salt tiles on fold 0 and lost most on the small-coverage bins
    "ignore-c1-bal": [*BAND, "pseudo.min_confident_pixels=0.5", "pseudo.ignore_band=true", "pseudo.cycles=1",
                      "pseudo.share=0.3", "pseudo.empty_share=0.38"],
    # ignore-c1-bal with each fold run started from its fold's source member (pseudo.warm_start): the round's budget
    # adds to the source's instead of starting over, so it is judged against warm-none, the same warm start and
    # budget with no pseudo tile drawn (share 0; its labels are made and never used)
}
VARIANTS["warm-bal"] = [*VARIANTS["ignore-c1-bal"], "pseudo.warm_start=true"]
VARIANTS["warm-none"] = [("pseudo.share=0" if o.startswith("pseudo.share=") else o) for o in VARIANTS["warm-bal"]]
CONTROLS = {"warm-bal": "warm-none"}  # variant -> the variant that differs from it only in drawing no pseudo tile


def load_parts(path: Path) -> list[dict]:
    return bq.read_parts(path, "bench_pseudo")


def key_of(part: dict) -> tuple:
    return part["variant"], part["fold"], part["minutes"], part["recipe"], tuple(part["overrides"])


def _current(part: dict, minutes: float, recipe: str) -> bool:
    """Whether ``part`` was measured at this budget and recipe with its variant's present settings."""
    return part["minutes"] == minutes and part["recipe"] == recipe and part["overrides"] == VARIANTS[part["variant"]]


def save_part(path: Path, part: dict) -> None:
    bq.write_part(path, part, key_of, "bench_pseudo")


def _steps(result, fold: int) -> list[dict]:
    return [{"step": s.name, "label": s.label, "score": s.folds.get(fold) if s.score is not None else None,
             "gain": s.gain_folds.get(fold) if not s.chained else None, "chained": s.chained}
            for s in result.waterfall.steps]


def _chain(steps: list[dict]) -> list[dict]:
    """The measured steps of a waterfall's chain (comparison rows and unmeasured steps left out), first to final."""
    return [s for s in steps if s["chained"] and s["score"] is not None]


def _ensemble(study: str, fold: int):
    from salt_exp.ensemble.build import EnsembleSpec
    from salt_exp.ensemble.options import EnsembleOptions
    from salt_exp.pipeline import ensemble_study

    with tempfile.TemporaryDirectory(prefix="bench-pseudo-") as tmp:
        spec = EnsembleSpec.for_study(study, options=EnsembleOptions(), folds=(fold,), out=str(Path(tmp) / "sub.csv"))
        return ensemble_study(spec)


def _bins(run_id: str) -> dict[str, float]:
    """An ensemble run's OOF mAP per coverage bin (its ``oof_map_bin_<bin>`` metrics), in the metric's bin order."""
    from salt_exp import contract as C
    from salt_exp.metrics import BIN_NAMES
    from salt_exp.tracking import run_summary

    metrics = run_summary(run_id).metrics
    return {b: round(metrics[C.Metric.oof_map_bin(b)], 4) for b in BIN_NAMES if C.Metric.oof_map_bin(b) in metrics}


def _logged_audit(pseudo_run: str, fold: int) -> dict[str, float] | None:
    """Fold k's audit as its pseudo run logged it (``confidence.audit``; None for a labels run made before audits)."""
    from salt_exp import contract as C
    from salt_exp.pseudo.confidence import AUDIT_KEYS
    from salt_exp.tracking import run_summary

    metrics = run_summary(pseudo_run).metrics
    if C.Metric.pseudo_audit(fold, "tiles") not in metrics:
        return None
    return {k: metrics.get(C.Metric.pseudo_audit(fold, k), float("nan")) for k in AUDIT_KEYS}


def _same_source(part: dict) -> bool:
    """Whether this store's ensemble version ``part["source"]`` is the one the part measured: a version number is only
    unique within one store, so its bench tags (fold, and the final OOF score it recorded) must match the part's."""
    from salt_exp import contract as C
    from salt_exp.tracking import ensemble_versions, run_summary

    number = int(part["source"].rpartition("/v")[2])
    try:
        (v,) = [v for v in ensemble_versions(C.ensemble_model(SOURCE_STUDY)) if int(v.version) == number]
    except Exception:  # noqa: BLE001 - no such model or version in this store
        return False
    tags = run_summary(v.ensemble_run).tags
    if not tags.get("bench.pseudo_source", "").startswith(f"{part['fold']}:"):
        return False
    final = _chain(json.loads(tags["bench.pseudo_steps"]))[-1]["score"]
    return abs(final - part["source_final"]) < 1e-9


def audit_parts(results: Path, parts: list[dict]) -> None:
    """``--audit``: each finished part without an audit gets one (``salt-exp pseudo --audit`` on its source version,
    fold and confidence settings: its labels' verdicts scored on the fold's validation tiles), saved in place."""
    from salt_exp.pseudo import PseudoRequest, audit_pseudo
    from salt_exp.pseudo.round import CONFIDENCE_KEYS

    done: dict[tuple, dict] = {}  # variants with the same confidence settings share their labels, so their audit
    for part in parts:
        if part.get("audit"):
            continue
        if not _same_source(part):
            print(f"[bench-pseudo] audit: {part['variant']} fold {part['fold']} skipped: this store's {part['source']} is "
                  "not the ensemble it was measured on (another store's version of that number)", flush=True)
            continue
        rules = tuple(o for o in part["overrides"] if o.split("=")[0].removeprefix("pseudo.") in CONFIDENCE_KEYS)
        key = (part["source"], part["fold"], rules)
        if key not in done:
            print(f"[bench-pseudo] audit: {part['variant']} fold {part['fold']} ({part['source']})", flush=True)
            audits = audit_pseudo(PseudoRequest(study=SOURCE_STUDY, version=part["source"].rpartition("/v")[2],
                                                folds=str(part["fold"]), overrides=rules))
            done[key] = audits[part["fold"]]
        save_part(results, {**part, "audit": done[key]})


def source_ensemble(data: Path, fold: int, minutes: float) -> tuple[str, dict, str]:
    """The source ensemble version of fold k (made here once; its run tagged ``bench.pseudo_source`` = k), what it
    scored, and its ensemble run."""
    from salt_exp import contract as C
    from salt_exp.config import config_hash
    from salt_exp.tracking import RunTracker, ensemble_versions, run_summary

    recipe = config_hash(bq.harness_config("cpu", "", data, minutes))
    tag = f"{fold}:{minutes:g}:{recipe}"
    try:
        for v in ensemble_versions(C.ensemble_model(SOURCE_STUDY)):
            s = run_summary(v.ensemble_run)
            if s.tags.get("bench.pseudo_source") == tag:
                return (f"{C.ensemble_model(SOURCE_STUDY)}/v{v.version}", json.loads(s.tags["bench.pseudo_steps"]),
                        v.ensemble_run)
    except Exception:  # noqa: BLE001 - no ensemble model yet
        pass
    if fold not in be.trained_folds(SOURCE_STUDY, recipe):
        out = bq.run_harness("cpu", "", data, fold, minutes)
        print(f"[bench-pseudo] source fold {fold}: val_map {out['val_map']:.4f} ({out['images_seen']} images)", flush=True)
    outcome = _ensemble(SOURCE_STUDY, fold)
    steps = _steps(outcome.result, fold)
    RunTracker.attach(outcome.logged.run_id).set_tags({"bench.pseudo_source": tag,
                                                       "bench.pseudo_steps": json.dumps(steps)})
    return f"{C.ensemble_model(SOURCE_STUDY)}/v{outcome.logged.version}", steps, outcome.logged.run_id


def run_part(data: Path, variant: str, fold: int, minutes: float, results: Path) -> None:
    from salt_exp.pseudo.round import PseudoRequest, run_pseudo

    t0 = time.perf_counter()
    version, source_steps, source_run = source_ensemble(data, fold, minutes)
    overrides = VARIANTS[variant]
    study = f"bp-{variant}-f{fold}"
    outcome = run_pseudo(PseudoRequest(study=SOURCE_STUDY, version=version.rpartition("/v")[2], folds=str(fold),
                                       into=study, overrides=(*overrides, f"schedule.budget_minutes={minutes:g}")))
    labels = outcome.labels[fold]
    ens = _ensemble(study, fold)
    steps = _steps(ens.result, fold)
    source, chain = _chain(source_steps), _chain(steps)
    compare = next((s for s in steps if s["step"] == "pseudo"), None)
    part = {"variant": variant, "fold": fold, "minutes": minutes, "overrides": overrides,
            "recipe": bq.recipe_of("cpu", "", data, minutes), "source": version,
            "source_best_single": source[0]["score"], "source_final": source[-1]["score"],
            "round_best_single": chain[0]["score"], "round_final": chain[-1]["score"],
            "gain": None if compare is None else compare["gain"],
            "kept_empty": labels.kept_empty, "kept_nonempty": labels.kept_nonempty,
            "ignored_pixels": labels.ignored_pixels, "round_study": study, "steps": steps,
            "source_steps": source_steps, "source_bins": _bins(source_run), "round_bins": _bins(ens.logged.run_id),
            "audit": _logged_audit(outcome.pseudo_run, fold),
            "wall_s": round(time.perf_counter() - t0, 1), "machine": bq.machine(),
            "commit": bq.git_commit(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    save_part(results, part)
    gain = "no comparison row" if part["gain"] is None else f"{part['gain']:+.4f}"
    print(f"[bench-pseudo] {variant} fold {fold}: source {part['source_final']:.4f}, round {part['round_final']:.4f} "
          f"({gain}); kept {labels.kept_empty} empty + {labels.kept_nonempty} non-empty", flush=True)


def report(parts: list[dict], variants: list[str], minutes: float, recipe: str, folds: list[int]) -> str:
    fresh = [p for p in parts if _current(p, minutes, recipe) and p["fold"] in folds and p["variant"] in variants]
    lines = [f"Source: `configs/cpu.yaml` at {minutes:g} min per fold on real data, its fold-k ensemble; a round: the "
             "same recipe and budget on train + that ensemble's pseudo-labels of the 4861 test tiles.", ""]
    if not fresh:
        return "\n".join([*lines, "No part measured yet."])
    lines += ["| variant | fold | kept empty / non-empty | ignored px | source best single | source ensemble | "
              "round best single | round ensemble | gain |", "|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(fresh, key=lambda p: (variants.index(p["variant"]), p["fold"])):
        gain = "-" if p["gain"] is None else f"{p['gain']:+.4f}"
        lines.append(f"| {p['variant']} | {p['fold']} | {p['kept_empty']} / {p['kept_nonempty']} | "
                     f"{p['ignored_pixels']} | {p['source_best_single']:.4f} | {p['source_final']:.4f} | "
                     f"{p['round_best_single']:.4f} | {p['round_final']:.4f} | {gain} |")
    lines += ["", "| variant | settings | folds | mean gain | gain sd over folds |", "|---|---|---|---|---|"]
    for v in variants:
        gains = [p["gain"] for p in fresh if p["variant"] == v and p["gain"] is not None]
        if gains:
            sd = f"{statistics.stdev(gains):.4f}" if len(gains) > 1 else "-"
            lines.append(f"| {v} | `{' '.join(VARIANTS[v])}` | {len(gains)} | {statistics.fmean(gains):+.4f} | {sd} |")
    paired = [(p, q) for p in fresh for q in fresh if CONTROLS.get(p["variant"]) == q["variant"]
              and p["fold"] == q["fold"]]
    if paired:  # a warm-started round's gain is mostly the extra training: what the pseudo tiles add beyond it
        lines += ["", "| variant | control | fold | round ensemble | control ensemble | pseudo tiles' gain |",
                  "|---|---|---|---|---|---|"]
        for p, q in sorted(paired, key=lambda pq: (pq[0]["variant"], pq[0]["fold"])):
            lines.append(f"| {p['variant']} | {q['variant']} | {p['fold']} | {p['round_final']:.4f} | "
                         f"{q['round_final']:.4f} | {p['round_final'] - q['round_final']:+.4f} |")
        for v in sorted({p["variant"] for p, _ in paired}):
            diffs = [p["round_final"] - q["round_final"] for p, q in paired if p["variant"] == v]
            if len(diffs) > 1:
                lines.append(f"| {v} | {CONTROLS[v]} | mean of {len(diffs)} (sd {statistics.stdev(diffs):.4f}) | "
                             f"| | {statistics.fmean(diffs):+.4f} |")
    audited = [p for p in fresh if p.get("audit")]
    if audited:  # how good the labels were: the same rules on the fold's validation tiles, against their truth
        lines += ["", "| variant | fold | val tiles kept empty (with salt) | kept non-empty (truly empty) | mAP kept / "
                  "dropped / all | trained pixels wrong | ignored band: share / wrong |", "|---|---|---|---|---|---|---|"]
        for p in sorted(audited, key=lambda p: (variants.index(p["variant"]), p["fold"])):
            a = p["audit"]
            lines.append(f"| {p['variant']} | {p['fold']} | {a['kept_empty']:.0f} ({a['empty_with_salt']:.0f}) of "
                         f"{a['tiles']:.0f} | {a['kept_nonempty']:.0f} ({a['nonempty_truly_empty']:.0f}) | "
                         f"{a['kept_map']:.4f} / {a['dropped_map']:.4f} / {a['all_map']:.4f} | {a['pixel_error']:.1%} | "
                         f"{a['ignored_share']:.1%} / {a['ignored_error']:.1%} |")
    binned = [p for p in fresh if p.get("source_bins") and p.get("round_bins")]
    if binned:  # where a round gains or loses: its ensemble's OOF mAP per coverage bin against its source's
        from salt_exp.metrics import BIN_NAMES  # the metric's bin order, whatever order a results file kept

        bins = [b for b in BIN_NAMES if b in binned[0]["source_bins"]]
        lines += ["", "| variant | folds | " + " | ".join(f"{b}: source / round" for b in bins) + " |",
                  "|---|---|" + "---|" * len(bins)]
        for v in variants:
            ps = [p for p in binned if p["variant"] == v]
            if ps:
                cells = [f"{statistics.fmean(p['source_bins'][b] for p in ps):.3f} / "
                         f"{statistics.fmean(p['round_bins'][b] for p in ps):.3f}" for b in bins]
                lines.append(f"| {v} | {len(ps)} | " + " | ".join(cells) + " |")
    machines = sorted({f"{p['machine']} ({p['commit']})" for p in fresh})
    return "\n".join([*lines, "", "Machines (commit): " + "; ".join(machines)])


def main(argv: list[str] | None = None) -> int:
    ap = bq.part_parser(__doc__, RESULTS)
    ap.add_argument("--variants", default="warm-bal,warm-none")
    ap.add_argument("--audit", action="store_true", help="audit the labels of finished parts that lack an audit "
                    "(their rules on the fold's validation tiles), then report")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: VARIANT:FOLD in a child process
    args = ap.parse_args(argv)
    data, results = bq.data_and_results(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    from salt_exp.cv import parse_folds
    from salt_exp.errors import SaltError

    try:
        folds = parse_folds(args.folds, 5)
        if args.part:
            variant, fold = args.part.split(":")
            run_part(data, variant, int(fold), args.minutes, results)
            return 0
        recipe = bq.recipe_of("cpu", "", data, args.minutes)
    except SaltError as exc:
        sys.exit(f"bench_pseudo: {exc}")
    done = {(p["variant"], p["fold"]) for p in load_parts(results)
            if _current(p, args.minutes, recipe)}
    todo = [(v, f) for f in folds for v in variants if (v, f) not in done][: args.max_parts]
    if args.audit:
        try:
            audit_parts(results, [p for p in load_parts(results) if _current(p, args.minutes, recipe)
                                  and p["variant"] in variants and p["fold"] in folds])
        except SaltError as exc:
            sys.exit(f"bench_pseudo: {exc}")
    elif not args.report_only:
        rc = bq.run_children("bench-pseudo", __file__, [
            (f"{variant} fold {fold}", ["--part", f"{variant}:{fold}", "--data", str(data), "--minutes", str(args.minutes),
                                        "--results", str(results), "--variants", args.variants]) for variant, fold in todo])
        if rc:
            return rc
    text = report(load_parts(results), variants, args.minutes, recipe, folds)
    print(text)
    if args.docs:
        bq.write_docs_block(BEGIN, END, "Pseudo-labelling rounds on real data (bench_pseudo.py)", text,
                            "make bench-pseudo DATA=../shared/tgs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
