"""The ``salt-exp`` command: one entry point, one subcommand per job.

Each subcommand builds its inputs from the command line and calls library functions
with explicit arguments. A ``SaltError`` becomes ``error: <one line>`` and exit status 1; a usage error
(argparse) exits 2, Ctrl-C 130. Libraries' INFO chatter (MLflow, alembic, Optuna, ...) is off unless ``-v``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from salt_exp.errors import SaltError, environment_failure

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def cmd_data_check(args: argparse.Namespace) -> int:
    from salt_exp.data.check import check_dataset, format_report

    report = check_dataset(args.dir, scheme=args.folds, k=args.k, seed=args.seed)
    _print_json(report) if args.json else print(format_report(report))
    return 1 if report["problems"] else 0


def cmd_data_folds(args: argparse.Namespace) -> int:
    from salt_exp.data.folds import fold_balance, folds_path, load_or_create_folds
    from salt_exp.data.kaggle import load_kaggle

    data = load_kaggle(args.dir)
    folds = load_or_create_folds(data, args.scheme, args.k, args.seed)
    print(folds_path(data, args.scheme, args.k, args.seed))
    for row in fold_balance(data, folds["fold"].to_numpy()):
        print(f"  fold {row['fold']}: {row['size']} tiles, empty {row['empty_share']:.1%}, coverage {row['mean_coverage']:.1%}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from salt_exp.synth import SynthConfig, generate_dataset

    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    cfg = SynthConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    summary = generate_dataset(args.out, cfg, overwrite=args.overwrite)
    _print_json(summary) if args.json else print(f"wrote {args.out}: " + json.dumps(summary, default=str))
    return 0


def _print_bins(bins: list[dict]) -> None:
    """The coverage-bin breakdown (metrics.bin_breakdown rows) as a table."""
    print(f"{'bin':>8} {'count':>6} {'score':>8} {'err share':>10}")
    for b in bins:
        print(f"{b['bin']:>8} {b['count']:>6} {b['mean_score']:>8.4f} {b['err_share']:>10.1%}")


def cmd_score(args: argparse.Namespace) -> int:
    from salt_exp.scoring import score_files

    result = score_files(args.submission, args.solution)
    if args.json:
        _print_json(result)
        return 0
    print(f"score    {result['score']:.6f} ({result['n']} images)")
    for split in ("public", "private"):
        if result.get(split) is not None:
            print(f"{split:8} {result[split]:.6f} ({result[f'n_{split}']} images)")
    _print_bins(result["bins"])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from salt_exp.config import load_config
    from salt_exp.train.run import run_fold

    cfg = load_config(args.config, args.set)
    if args.fold < 0:  # -1 is contract.FULL_FIT inside the library: a full-data fit comes from `cv --full-fit`
        n = cfg.data.n_folds
        raise SaltError(f"--fold {args.fold} is out of range: data.n_folds is {n} (valid 0..{n - 1}; a fit on every "
                        "tile is `salt-exp cv CONFIG --full-fit`)")
    info = run_fold(cfg, args.fold, study=args.study, resume=args.resume)
    r = info.result
    print(f"run {info.run_id}: {r.status}{' (' + r.reason + ')' if r.reason else ''}; best val_map {r.best_val_map:.4f}; "
          f"registered versions {sorted(info.versions.values(), key=int)}")
    return 0 if r.status == "FINISHED" else 1


def cmd_cv(args: argparse.Namespace) -> int:
    from salt_exp.config import load_config
    from salt_exp.cv import parse_folds, run_cv

    cfg = load_config(args.config, args.set)
    r = run_cv(cfg, folds=parse_folds(args.folds, cfg.data.n_folds), study=args.study)
    print(f"cv run {r.run_id} (study {r.study}): cv_map {r.cv_map:.4f} +- {r.cv_map_sd:.4f}; OOF mAP {r.oof_map:.4f}; "
          f"trained now: {r.trained or 'none (all folds had finished)'}")
    for fold, value in r.fold_maps.items():
        print(f"  fold {fold}: {value:.4f} (run {r.fold_runs[fold]})")
    _print_bins(r.bins)
    if args.full_fit:
        from salt_exp.contract import snapshot_model
        from salt_exp.full_fit import run_full_fit

        info, plan = run_full_fit(cfg, r)
        sc = plan.config.schedule
        print(f"full fit run {info.run_id}{' (had finished)' if info.already_finished else ''}: every labelled tile, "
              f"{sc.cycles} cycle(s) x {sc.cycle_epochs} epoch(s) of {plan.epoch_batches} batches "
              f"(the folds' {plan.cv_epoch_batches:g} x {plan.scale:.3f}), LR {plan.config.optim.lr:g}, "
              f"threshold {plan.threshold:.3f}; registered in {snapshot_model(r.study)} as fold all")
    return 0


def cmd_pseudo(args: argparse.Namespace) -> int:
    from salt_exp.contract import fold_label
    from salt_exp.pseudo import PseudoRequest, audit_pseudo, run_pseudo

    request = PseudoRequest(study=args.study, version=args.version, config=args.config, overrides=tuple(args.set),
                            folds=args.folds, into=args.into, full_fit=args.full_fit, device=args.device)
    if args.audit:  # the per-fold lines are printed as each fold is measured
        audit_pseudo(request)
        print("audit only: nothing labelled, trained or logged; the same command without --audit runs the round")
        return 0
    o = run_pseudo(request)
    print(f"pseudo run {o.pseudo_run} ({'reused' if o.reused else 'new'}): round {o.round} in study {o.study}, labels "
          f"from {o.source.key} (rules {', '.join(o.source.rules) or 'none'})")
    for fold, fl in sorted(o.labels.items()):
        print(f"  fold {fold_label(fold)}: kept {fl.kept_empty} empty + {fl.kept_nonempty} non-empty, dropped "
              f"{fl.dropped} (threshold {fl.threshold:.2f})")
    r = o.cv
    print(f"cv run {r.run_id}: cv_map {r.cv_map:.4f} +- {r.cv_map_sd:.4f}; OOF mAP {r.oof_map:.4f}; "
          f"trained now: {r.trained or 'none (all folds had finished)'}")
    for fold, value in r.fold_maps.items():
        print(f"  fold {fold}: {value:.4f} (run {r.fold_runs[fold]})")
    if o.full_fit is not None:
        print(f"full fit run {o.full_fit.run_id}{' (had finished)' if o.full_fit.already_finished else ''}")
    print(f"next: salt-exp ensemble --study {o.study}, then salt-exp pseudo --study {o.study} for round {o.round + 1}")
    return 0


def _print_ensemble(outcome) -> None:
    from salt_exp.contract import CHAMPION, ensemble_model

    spec, result, logged = outcome.spec, outcome.result, outcome.logged
    oof = result.oof
    print(f"ensemble run {logged.run_id}, registered {ensemble_model(spec.study)} v{logged.version} (alias {CHAMPION})")
    print(f"members: {sum(len(v) for v in result.selection.values())} snapshots over folds {sorted(result.selection)}"
          + (f"; left out by the greedy selection (the mean with them scored lower): "
             f"{', '.join(m.key for m in result.left_out)}" if result.left_out else ""))
    if result.full_fit or spec.options.full_fit != "include":
        print(f"full-data fits ({spec.options.full_fit}): {', '.join(m.key for m in result.full_fit) or 'none'}; test "
              f"threshold {result.test_threshold:.3f}")
    print(f"OOF mAP {oof.score:.4f} (best single snapshot {oof.best_single:.4f}); thresholds "
          + ", ".join(f"fold {f.fold}: {f.threshold:.2f}" for f in oof.folds))
    for g in result.rule_gains:
        print(f"  post-processing {g['rule']:<28} OOF gain {g['gain']:+.4f} ({g['tiles_changed']} tiles changed)")
    print(f"rules applied: {', '.join(result.rules) or 'none'}; OOF after post-processing {result.oof_post:.4f}"
          + (f" ({result.broken_seams} mosaic seams cut by the jigsaw check)" if result.broken_seams else ""))
    if result.waterfall is not None:
        print("waterfall (out of fold; gain = step - previous, sd over folds):")
        for st in result.waterfall.steps:
            gain = "" if st.gain is None else f" {st.gain:+.4f}" + ("" if st.gain_sd is None else f" (sd {st.gain_sd:.4f})")
            print(f"  {st.label:<32} " + (f"{st.score:.4f}{gain}" if st.score is not None else f"- ({st.note})"))
    lb = logged.lb
    if result.submission:
        print(f"submission: {result.submission}" + "".join(f"; {k} LB {lb[k]:.4f}" for k in ("public", "private") if lb.get(k) is not None))
    else:
        print("no test/images in the dataset: no submission written")


def cmd_ensemble(args: argparse.Namespace) -> int:
    from salt_exp.cv import parse_folds
    from salt_exp.ensemble.build import EnsembleSpec
    from salt_exp.ensemble.options import ensemble_options
    from salt_exp.pipeline import ensemble_study

    threshold = args.threshold if args.threshold == "search" else _number(args.threshold, "--threshold")
    options = ensemble_options({"top_cycles": args.top_cycles, "selection": args.selection, "threshold": threshold, "postprocess": args.postprocess,
                                "full_fit": args.full_fit, "swa": args.swa, "oof_tta": not args.no_oof_tta,
                                "test_context": not args.no_test_context,
                                "seam_max_cost": _number(args.seam_max_cost, "--seam-max-cost", "a number in [0, 2]")}, "salt-exp ensemble")
    models = [m for m in (args.models or "").split(",") if m]
    folds = tuple(parse_folds(args.folds, 10 ** 6)) if args.folds else ()
    spec = EnsembleSpec.for_study(args.study, models, options=options, data=args.data, out=args.out, device=args.device,
                                  folds=folds)
    _print_ensemble(ensemble_study(spec))
    return 0


def _number(text: str, flag: str, expected: str = "'search' or a number") -> float:
    try:
        return float(text)
    except ValueError:
        raise SaltError(f"{flag}: expected {expected}, got {text!r}") from None


def cmd_swa(args: argparse.Namespace) -> int:
    from salt_exp.ensemble.swa_runs import swa_study

    report = swa_study(args.study, runs=args.runs, top=args.top, bn_batches=args.bn_batches, device=args.device)
    print(f"SWA snapshots of {report.selection}")
    for o in report.outcomes:
        print(_swa_line(o))
    if not any(o.version for o in report.outcomes):
        raise SaltError(f"study {args.study!r}: no fold run could be averaged (see the lines above)")
    return 0


def _swa_line(o) -> str:
    """One fold's SWA snapshot against the run's best cycle, or why it has none."""
    from salt_exp.contract import fold_label

    head = f"  fold {fold_label(o.fold)} (run {o.run_id}): "
    if o.version is None:
        return head + f"skipped: {o.skipped}"
    v, b = o.version, o.best_cycle
    versus = f" vs best cycle {b.cycle} {b.val_map:.4f} ({v.val_map - b.val_map:+.4f})" if b is not None else ""
    return (head + f"swa of cycles {','.join(map(str, o.cycles))} val_map {v.val_map:.4f}{versus}; {v.key}"
            + ("" if o.created else " (made before)"))


def _confirm_cost(request, yes: bool, estimate_only: bool) -> bool:
    """Print what the study will cost; False when it should not start (too long and not confirmed)."""
    from salt_exp.study.cost import CONFIRM_HOURS
    from salt_exp.study.driver import estimate_cost

    cost = estimate_cost(request)
    print(cost.line(), flush=True)
    if estimate_only:
        return False
    if yes or not cost.hours > CONFIRM_HOURS:
        return True
    if sys.stdin.isatty():
        return input(f"that is more than {CONFIRM_HOURS:g} h; start it? [y/N] ").strip().lower() in ("y", "yes")
    raise SaltError(f"study would take ~{cost.hours:.0f} h on this machine (> {CONFIRM_HOURS:g} h): pass --yes to start "
                    "it anyway, or cut it (schedule.budget_minutes, fewer trials or epochs)")


def cmd_study(args: argparse.Namespace) -> int:
    from salt_exp.pipeline import run_study_pipeline
    from salt_exp.study.driver import StudyRequest
    from salt_exp.study.report import format_report

    request = StudyRequest(spec_path=args.file, storage=args.storage, overrides=tuple(args.set),
                           n_trials=args.n_trials, workers=args.workers, new=args.new,
                           gpus=tuple(g.strip() for g in (args.gpus or "").split(",") if g.strip()),
                           ignore_missing=args.ignore_missing)
    if not _confirm_cost(request, args.yes, args.estimate):
        return 0 if args.estimate else 1
    outcome = run_study_pipeline(request, ensemble=not args.no_ensemble,
                                 on_report=lambda report: print(format_report(report)))
    if outcome.ensemble is not None:
        _print_ensemble(outcome.ensemble)
    for path in outcome.visuals:
        print(f"wrote {path} (also logged to the champion ensemble run)")
    return 0 if outcome.ok else 1


def cmd_study_report(args: argparse.Namespace) -> int:
    from salt_exp.study.report import format_report, study_report

    report = study_report(args.name, args.storage)
    _print_json(report) if args.json else print(format_report(report))
    return 0


def cmd_viz_mosaic(args: argparse.Namespace) -> int:
    from salt_exp.viz.commands import mosaic_command

    paths = mosaic_command(run=args.run, study=args.study, submission=args.submission, data=args.data,
                           mosaic_ids=args.mosaic_id, out=args.out, cycle=args.cycle, log=not args.no_log)
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_viz_evolution(args: argparse.Namespace) -> int:
    from salt_exp.viz.commands import evolution_command

    results = evolution_command(args.study, mosaic_ids=args.mosaic_id, out=args.out, run=args.run, data=args.data,
                                log=not args.no_log)
    for gif, steps in results:
        print(f"wrote {gif}: {len(steps)} improving frames")
        for s in steps:
            print(f"  {s['step']}. {s['frame']:<40} mosaic score {s['mosaic_score']:.4f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from salt_exp.viz.commands import report_command

    report = report_command(run=args.run, study=args.study, out=args.out, cycle=args.cycle, data=args.data,
                            worst=args.worst, log=not args.no_log)
    a = report.analysis
    print(f"wrote {report.html} ({len(report.figures)} figures); {len(a.ids)} OOF tiles, score {a.score:.4f}")
    for r in a.types:
        if r["count"]:
            print(f"  {r['type']:<9} n={r['count']:<5} mean {r['mean_score']:.3f}  error share {100 * r['err_share']:.1f}%")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from salt_exp.models import list_encoders

    rows = list_encoders()
    _print_json(rows) if args.json else print("\n".join(f"{r['name']:36} {r['family']:18} {r['params'] / 1e6:8.2f}M" for r in rows))
    return 0


def _add_synth_args(p: argparse.ArgumentParser) -> None:
    from salt_exp.synth import SynthConfig

    p.add_argument("--out", default="data/synthetic", help="output folder (Kaggle layout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument("--json", action="store_true")
    for f in dataclasses.fields(SynthConfig):
        kind = type(f.default) if f.default is not dataclasses.MISSING else str
        if kind in (int, float, str):
            p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                           help=f"SynthConfig.{f.name} (default {f.default})")
    p.set_defaults(func=cmd_data_synth)


def _add_source_args(p: argparse.ArgumentParser, submission: bool) -> None:
    p.add_argument("--run", help="a fold run (its best snapshot, or --cycle) or an ensemble run")
    p.add_argument("--study", help="the study's champion ensemble")
    if submission:
        p.add_argument("--submission", help="a submission CSV (test tiles only)")
    else:
        p.set_defaults(submission=None)
    p.add_argument("--cycle", type=int, help="for a fold run: the snapshot of this cycle (-1: its SWA snapshot)")
    p.add_argument("--data", help="dataset folder (default: the one the run used)")
    p.add_argument("--out", help="output folder (default reports/<study or run>)")
    p.add_argument("--no-log", action="store_true", help="only write files, log nothing to MLflow")


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """``data check``, ``data folds``, ``data synth``."""
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="validate a Kaggle-layout folder and report what it holds")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--folds", default="random", help="fold scheme whose balance is reported")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_data_check)
    p = data.add_parser("folds", help="create (once) and show the persisted folds of a dataset")
    p.add_argument("dir")
    p.add_argument("--scheme", default="random", help="random | coverage | depth | mosaic")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_data_folds)
    _add_synth_args(data.add_parser("synth", help="write the synthetic TGS-like dataset"))


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """``train``, ``cv``, ``study``, ``study-report``, ``pseudo``: runs that train."""
    from salt_exp.contract import ADHOC

    p = sub.add_parser("train", help="train one fold of one config as an MLflow run")
    p.add_argument("config", help="experiment YAML (may use extends:)")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    p.add_argument("--study", default=ADHOC, help="experiment salt/<study> and registered model salt-<study>")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run of this study/fold/config")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="cross-validate one config: a cv run with one nested fold run per fold, resumable")
    p.add_argument("config", help="experiment YAML (may use extends:)")
    p.add_argument("--folds", default=None, help="e.g. 0-4 or 0,2,3 (default: every fold of data.n_folds)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    p.add_argument("--study", default=None, help="experiment salt/<study> and registered model salt-<study> "
                   "(default: the config's name, or cv)")
    p.add_argument("--full-fit", action="store_true", help="then train the recipe once on every labelled tile (steps, "
                   "LR and threshold from the fold runs), registered as fold 'all' for the ensemble")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("study", help="run (or resume) an Optuna study of fold runs, tracked in MLflow")
    p.add_argument("file", help="studies/<name>.yaml (the study is named after the file)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: a journal file path (default mlruns/optuna/<name>.journal) or postgresql+psycopg2://...")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1); with GPUs "
                   "each worker gets its own (CUDA_VISIBLE_DEVICES), round robin")
    p.add_argument("--gpus", help="GPU ids the workers take round robin, e.g. 0,1 (default: every visible GPU)")
    p.add_argument("--n-trials", type=int, default=None, help="total trials of the study (default: the file's n_trials)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override applied to every trial, repeatable (e.g. data.root=../shared/tgs)")
    p.add_argument("--no-ensemble", action="store_true", help="skip the study file's ensemble section")
    p.add_argument("--yes", action="store_true", help="start even when the estimate exceeds 24 h on this machine")
    p.add_argument("--estimate", action="store_true", help="print the study's cost estimate and stop")
    p.add_argument("--new", action="store_true", help="set the existing study aside (journal renamed .bak, or copied "
                   "to <name>.bak-<time> in a database) and start a new one")
    p.add_argument("--ignore-missing", action="store_true", help="resume (and ensemble) although the Optuna storage and "
                   "the MLflow store disagree; recorded on the study")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("study-report", help="table of a study's trials and its best trial")
    p.add_argument("name", help="study name (the study file's stem)")
    p.add_argument("--storage", default=None, help="as for `study` (default mlruns/optuna/<name>.journal)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_study_report)

    p = sub.add_parser("pseudo", help="pseudo-labelling round: label the test tiles from a study's ensemble (per fold, "
                       "leak-free), then cross-validate the round's config on train + pseudo-labels")
    p.add_argument("--study", required=True, help="the study whose ensemble labels the test tiles")
    p.add_argument("--version", default="champion", help="ensemble version: an alias (default champion) or a number")
    p.add_argument("--config", default=None, help="the round's config (default: the ensemble's best member's config)")
    p.add_argument("--folds", default=None, help="folds to train, e.g. 0-4 (default: every fold of data.n_folds)")
    p.add_argument("--into", default=None, help="the round's study (default <study>-pl<round>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override of the round's config, repeatable (e.g. pseudo.share=0.3)")
    p.add_argument("--full-fit", action="store_true", help="then a full-data fit on every tile plus the whole ensemble's labels")
    p.add_argument("--device", default="auto", help="where the members predict the test tiles")
    p.add_argument("--audit", action="store_true",
                   help="only measure the confidence rules on each fold's validation tiles (kept counts, wrong verdicts, "
                   "mAP of the kept labels): tune pseudo.* before spending a round; nothing is trained or logged")
    p.set_defaults(func=cmd_pseudo)


def _add_result_commands(sub: argparse._SubParsersAction) -> None:
    """``ensemble``, ``viz``, ``report``: what is built from the runs' stored results."""
    from salt_exp.ensemble.options import EnsembleOptions

    p = sub.add_parser("ensemble", help="build, score and register an ensemble from the registry; write a submission")
    p.add_argument("--study", required=True)
    p.add_argument("--models", help="comma list of registered models (default salt-<study>)")
    defaults = EnsembleOptions()
    p.add_argument("--top-cycles", type=int, default=defaults.top_cycles, help="snapshots per fold and model, best val_map first")
    p.add_argument("--threshold", default=str(defaults.threshold), help="'search' (per fold, on its OOF) or a number")
    p.add_argument("--postprocess", default=defaults.postprocess, help="auto (rules with OOF gain > 0) | none | comma list")
    p.add_argument("--full-fit", default=defaults.full_fit, choices=("include", "exclude", "only"),
                   help="full-data fits of the models (salt-exp cv --full-fit) in the test prediction: include (beside "
                   "the folds, default), only, or exclude; the OOF figures are the folds' either way")
    p.add_argument("--selection", default=defaults.selection, choices=("greedy", "top"),
                   help="greedy (default): per fold a further snapshot joins only when it raises the fold's OOF score; "
                   "top: all of the --top-cycles best")
    p.add_argument("--folds", help="only these folds' snapshots, e.g. 0-2 or 3 (default: every fold)")
    p.add_argument("--swa", default=defaults.swa, choices=("include", "exclude"),
                   help="SWA snapshots (salt-exp swa): compete with the cycles on val_map (include) or never (exclude)")
    p.add_argument("--no-oof-tta", action="store_true", help="score OOF on the stored one-view probabilities instead "
                   "of predicting the validation tiles again with the test prediction's h-flip TTA")
    p.add_argument("--no-test-context", action="store_true",
                   help="the rules read only OOF tiles as neighbours, not the test tiles' predictions")
    p.add_argument("--seam-max-cost", default=str(defaults.seam_max_cost),
                   help="jigsaw seam check: vertical links costlier than this are not carried across (2 = off)")
    p.add_argument("--data", help="dataset folder (default: the members' data root)")
    p.add_argument("--out", help="submission path (default submissions/<study>.csv)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("swa", help="average each fold run's cycle snapshots (SWA, BatchNorm recalibrated) into one "
                       "more registered snapshot of the run, scored out of fold like its cycles")
    p.add_argument("--study", required=True)
    p.add_argument("--runs", default="best", help="best (the fold runs of the study's best trial or cv run, default) "
                   "| all (every fold run with 2+ cycle snapshots)")
    p.add_argument("--top", type=int, default=None, help="average the N best cycles by val_map (default: every cycle)")
    p.add_argument("--bn-batches", type=int, default=None, help="training batches that recompute the BatchNorm "
                   "statistics (default: one pass over the fold's training tiles)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_swa)

    viz = sub.add_parser("viz", help="figures of predictions: mosaics, their evolution").add_subparsers(
        dest="viz_command", required=True)
    p = viz.add_parser("mosaic", help="PNG of a reassembled mosaic: image, truth, prediction, tile scores")
    _add_source_args(p, submission=True)
    p.add_argument("--mosaic-id", type=int, action="append", default=[], help="repeatable (default: the mosaic "
                   "with the most tiles having both truth and prediction)")
    p.set_defaults(func=cmd_viz_mosaic)
    p = viz.add_parser("evolution", help="GIF per mosaic of a study's snapshots/ensembles that improved it")
    p.add_argument("--study", required=True)
    p.add_argument("--mosaic-id", type=int, action="append", default=[], help="repeatable (default: as for mosaic)")
    p.add_argument("--run", help="log into this run (default: the study's champion ensemble)")
    p.add_argument("--data", help="dataset folder (default: the one the runs used)")
    p.add_argument("--out", help="output folder (default reports/<study>)")
    p.add_argument("--no-log", action="store_true", help="only write files, log nothing to MLflow")
    p.set_defaults(func=cmd_viz_evolution)

    p = sub.add_parser("report", help="error-analysis report (PNGs + one HTML page) of a fold or ensemble run")
    _add_source_args(p, submission=False)
    p.add_argument("--worst", type=int, default=12, help="tiles in the gallery of worst tiles")
    p.set_defaults(func=cmd_report)


def cmd_doctor(args: argparse.Namespace) -> int:
    from salt_exp.doctor import doctor, report_lines

    findings = doctor(args.study, args.storage)
    for line in report_lines(findings, args.study):
        print(line)
    return 1 if findings else 0


def cmd_ui(args: argparse.Namespace) -> int:
    from salt_exp.ui import run_ui

    return run_ui(args.study, args.host, args.port, url_only=args.url_only)


def _add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """``models``, ``score``, ``ui``, ``doctor``."""
    p = sub.add_parser("doctor", help="check the MLflow store, the Optuna journal, the registry and the artifact root "
                       "against each other: one line per finding, exit 1 when any")
    p.add_argument("--study", help="one study (default: every salt/* experiment)")
    p.add_argument("--storage", help="its Optuna storage (default mlruns/optuna/<study>.journal)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("ui", help="the MLflow UI over the project's store, opened on a study's training runs")
    p.add_argument("--study", help="open salt/<study> (default: the experiment list)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--url-only", action="store_true", help="print the URL, start nothing")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("models", help="list the encoders with parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("score", help="score a submission against a solution (public/private with Usage)")
    p.add_argument("submission")
    p.add_argument("solution")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)


def build_parser() -> argparse.ArgumentParser:
    from salt_exp import __version__

    parser = argparse.ArgumentParser(prog="salt-exp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"salt-exp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the libraries' INFO logs (MLflow, database migrations, artifact progress bars)")
    sub = parser.add_subparsers(dest="command", required=True)
    from salt_exp.serving.commands import add_commands as _add_serving_commands

    for add in (_add_data_commands, _add_run_commands, _add_result_commands, _add_serving_commands, _add_tool_commands):
        add(sub)
    return parser


QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             # "View run ... at" lines a server-backed client prints per run (to a study's short-lived local server)
             "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
QUIET_LOGGERS = ("mlflow", "alembic", "optuna", "urllib3", "httpx", "huggingface_hub", "timm")


def quiet_libraries() -> None:
    """The libraries' INFO chatter off (their warnings and errors still show), also in child processes
    (study workers, the local MLflow server) through the environment; a user's own settings win."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        return args.func(args)
    except SaltError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk or an unreachable tracking server: one line saying what to fix
        failure = environment_failure(exc)
        if failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
