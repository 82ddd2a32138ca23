"""The ``study`` and ``study-report`` subcommands (the same code is pasted into ``salt_exp/cli.py``).

``python -m salt_exp.study study studies/quickstart.yaml`` works before that paste.
"""

from __future__ import annotations

import argparse
import json


def cmd_study(args: argparse.Namespace) -> int:
    from salt_exp.study.driver import StudyRequest, run_study
    from salt_exp.study.report import format_report, study_report
    from salt_exp.study.spec import load_study_spec

    req = StudyRequest(args.file, args.storage, tuple(args.set), args.n_trials, args.workers)
    codes = run_study(req)
    name = load_study_spec(args.file, args.set).name
    print(format_report(study_report(name, args.storage)))
    return 0 if all(c == 0 for c in codes) else 1


def cmd_study_report(args: argparse.Namespace) -> int:
    from salt_exp.study.report import format_report, study_report

    report = study_report(args.name, args.storage)
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0


def add_study_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run (or resume) an Optuna study of fold runs, tracked in MLflow")
    p.add_argument("file", help="studies/<name>.yaml (the study is named after the file)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: a journal file path (default mlruns/optuna/<name>.journal) or postgresql://...")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--n-trials", type=int, default=None, help="total trials of the study (default: the file's n_trials)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override applied to every trial, repeatable (e.g. data.root=../shared/tgs)")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("study-report", help="table of a study's trials and its best trial")
    p.add_argument("name", help="study name (the study file's stem)")
    p.add_argument("--storage", default=None, help="as for `study` (default mlruns/optuna/<name>.journal)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_study_report)
