"""``salt-exp study-report``: the trials of a study (from Optuna alone) and the best one."""

from __future__ import annotations

import json
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from salt_exp.contract import TrialAttr
from salt_exp.study.recover import FAILURE, RESUME_OF, SKIPPED, mlflow_trial_number
from salt_exp.study.storage import load_study


def _row(t: FrozenTrial, superseded_by: dict[int, int]) -> dict[str, Any]:
    folds = {str(TrialAttr.parse_fold_map(k)): v for k, v in t.user_attrs.items()
             if TrialAttr.parse_fold_map(k) is not None}
    state = t.state.name
    if t.number in superseded_by:
        state = f"RESUMED->{superseded_by[t.number]}"
    elif SKIPPED in t.user_attrs:
        state = "SKIPPED"
    return {"number": t.number, "mlflow_trial": mlflow_trial_number(t.number, t.user_attrs), "state": state,
            "cv_map": t.value if t.state == TrialState.COMPLETE else None,
            "folds": dict(sorted(folds.items(), key=lambda kv: int(kv[0]))), "params": dict(t.params),
            "last_report": _last_report(t),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "failure": t.user_attrs.get(FAILURE), "parent_run_id": t.user_attrs.get(TrialAttr.PARENT_RUN_ID)}


def _last_report(t: FrozenTrial) -> list[float] | None:
    """[step, value] of the trial's last report to the pruner (what a pruned trial was judged on)."""
    if not t.intermediate_values:
        return None
    step = max(t.intermediate_values)
    return [step, t.intermediate_values[step]]


def study_report(name: str, storage: str | None) -> dict[str, Any]:
    study = load_study(name, storage)
    trials = study.get_trials(deepcopy=False)
    superseded_by = {t.user_attrs[RESUME_OF]: t.number for t in trials if RESUME_OF in t.user_attrs}
    rows = [_row(t, superseded_by) for t in trials]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: r["cv_map"]) if complete else None
    return {"study": name, "direction": "maximize", "trials": rows, "best": best}


def _decoded(value: Any) -> Any:
    """A categorical choice carried as JSON text (a dict of loss terms, a section) as its value again."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    folds = sorted({k for r in report["trials"] for k in r["folds"]}, key=int)
    head = ["trial", "state", "cv_map", *[f"fold{k}" for k in folds], "last@step", "duration", "params"]
    lines = [head]
    for r in report["trials"]:
        dur = f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-"
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        if r["failure"] and r["state"] == "FAIL":
            params += f"  [{r['failure']}]"
        last = r.get("last_report")
        lines.append([str(r["number"]), r["state"], _fmt(r["cv_map"]), *[_fmt(r["folds"].get(k)) for k in folds],
                      f"{last[1]:.4f}@{last[0]}" if last else "-", dur, params])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head) - 1)]
    text = ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip() for row in lines]
    best = report["best"]
    text.append(f"best: trial {best['number']} cv_map={best['cv_map']:.4f} "
                + json.dumps({k: _decoded(v) for k, v in best["params"].items()}) if best
                else "best: none (no COMPLETE trial yet)")
    return "\n".join([f"study {report['study']} ({len(report['trials'])} trials)", *text])
