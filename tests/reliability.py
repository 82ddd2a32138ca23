"""The reliability matrices (issue 23): every bad-input case and every injected fault is a test marked

    @pytest.mark.reliability("bad-input", "config file", "unknown key", "exit 1; one line naming the file and key")

(``matrix``: ``bad-input`` or ``fault``; ``group``: what was fed or broken; ``case``; what the test asserts),
or one parameter of a test: ``pytest.param(..., marks=reliability(...))``. A test that generates its inputs
(hypothesis) reports how many it tried with :func:`tried` so the tables can say so.

The hooks below (imported by ``conftest.py``) record each marked test's outcome; with ``SALT_EXP_RELIABILITY_OUT``
set, the session writes them as JSON. ``make reliability`` runs the marked tests that way and then

    python -m tests.reliability RESULTS.json --docs docs/RELIABILITY.md

writes the two tables (case, what is asserted, result) and their counts between the markers in docs/RELIABILITY.md,
so the page is generated from a test run. ``tests/test_docs.py`` checks that the page lists exactly the cases the
suite holds (``pytest --collect-only`` writes the case list the same way).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

OUT_ENV = "SALT_EXP_RELIABILITY_OUT"
MATRICES = {"bad-input": "Bad-input matrix", "fault": "Fault matrix"}
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"
ROOT = Path(__file__).resolve().parents[1]

_cases: dict[str, dict] = {}  # nodeid -> case record, filled at collection, outcome added when it runs
_tried: dict[str, int] = defaultdict(int)


def reliability(matrix: str, group: str, case: str, asserts: str) -> pytest.MarkDecorator:
    """The marker, for ``pytest.param(..., marks=reliability(...))``."""
    return pytest.mark.reliability(matrix, group, case, asserts)


def tried(n: int = 1) -> None:
    """Count ``n`` generated inputs for the running test (hypothesis examples, cases of a generated family)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    _tried[current.rsplit(" (", 1)[0]] += n


def _meta(item: pytest.Item) -> dict | None:
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return None
    args = list(marker.args) + [marker.kwargs.get(k) for k in ("matrix", "group", "case", "asserts")[len(marker.args):]]
    matrix, group, case, asserts = args
    if matrix not in MATRICES or not all(isinstance(a, str) and a for a in (group, case, asserts)):
        raise pytest.UsageError(f"{item.nodeid}: reliability(matrix, group, case, asserts) expects matrix in "
                                f"{sorted(MATRICES)} and three non-empty strings, got {marker.args} {marker.kwargs}")
    return {"nodeid": item.nodeid, "matrix": matrix, "group": group, "case": case, "asserts": asserts,
            "outcome": "not run", "reason": ""}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        meta = _meta(item)
        if meta is not None:
            _cases[item.nodeid] = meta


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    rec = _cases.get(report.nodeid)
    if rec is None:
        return
    if report.when == "call" or report.outcome != "passed":  # a setup error or skip counts too
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            rec.update(outcome="skipped", reason=reason.removeprefix("Skipped: "))
        elif report.failed:
            rec.update(outcome="failed", reason=report.when)
        elif rec["outcome"] == "not run":
            rec.update(outcome="passed")
    if report.when == "teardown" and report.failed:
        rec.update(outcome="failed", reason="teardown")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get(OUT_ENV)
    if not out or not _cases:
        return
    for nodeid, n in _tried.items():
        if nodeid in _cases:
            _cases[nodeid]["tried"] = n
    payload = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
               "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
               "cases": sorted(_cases.values(), key=lambda r: r["nodeid"])}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    tmp.replace(path)


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------- the page


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def case_key(rec: dict) -> tuple[str, str, str]:
    return rec["matrix"], rec["group"], rec["case"]


def render(payload: dict) -> str:
    """The generated part of docs/RELIABILITY.md: counts, then one table per matrix."""
    cases = payload["cases"]
    lines = [f"Generated by `make reliability` on {payload['date']} at commit {payload['commit']} "
             f"({payload['machine']}) from the tests marked `reliability`.", ""]
    for matrix, title in MATRICES.items():
        rows = [r for r in cases if r["matrix"] == matrix]
        if not rows:
            continue
        passed = sum(r["outcome"] == "passed" for r in rows)
        skipped = [r for r in rows if r["outcome"] == "skipped"]
        generated = sum(r.get("tried", 0) for r in rows)
        what = "bad-input cases tried" if matrix == "bad-input" else "fault points injected"
        summary = f"**{title}: {len(rows)} {what}, {passed} passing"
        summary += f", {len(skipped)} skipped on this machine" if skipped else ""
        failed = len(rows) - passed - len(skipped)
        summary += f", {failed} failing or not run" if failed else ""
        summary += "**" + (f" ({generated} generated inputs in the generated cases)" if generated else "")
        lines += [f"### {title}", "", summary, "", "| group | case | asserted | result |", "| --- | --- | --- | --- |"]
        for r in sorted(rows, key=lambda r: (r["group"], r["case"])):
            result = r["outcome"] + (f" ({r['tried']} generated)" if r.get("tried") else "")
            result += f": {r['reason']}" if r["outcome"] == "skipped" and r["reason"] else ""
            lines.append(f"| {_cell(r['group'])} | {_cell(r['case'])} | {_cell(r['asserts'])} | {_cell(result)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def documented_cases(doc: Path) -> set[tuple[str, str, str]]:
    """(matrix, group, case) of every table row between the markers of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return set()
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    found, matrix = set(), None
    titles = {v: k for k, v in MATRICES.items()}
    for line in body.splitlines():
        if line.startswith("### "):
            matrix = titles.get(line[4:].strip())
        elif line.startswith("| ") and matrix and not line.startswith(("| group ", "| --- ")):
            cells = [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
            found.add((matrix, cells[0], cells[1]))
    return found


def write_docs(payload: dict, doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"error: {doc} has no {BEGIN} ... {END} markers to write the tables between")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(f"{head}{BEGIN}\n{render(payload)}{END}{tail}", encoding="utf-8")
    tmp.replace(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write docs/RELIABILITY.md's tables from a reliability test run")
    ap.add_argument("results", nargs="+", help=f"the JSON a test run wrote (${OUT_ENV}); several: a case's latest "
                                               "result wins (a rerun of some tests after a whole run)")
    ap.add_argument("--docs", default=None, help="the page to write the tables into (else printed)")
    args = ap.parse_args(argv)
    payload: dict = {}
    cases: dict[str, dict] = {}
    for results in args.results:
        try:
            run = json.loads(Path(results).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: {results}: expected the JSON a `make reliability` run writes ({exc})", file=sys.stderr)
            return 1
        cases.update({r["nodeid"]: r for r in run["cases"] if r["outcome"] != "not run" or r["nodeid"] not in cases})
        dates = f"{payload['date']} and {run['date']}" if payload and payload["date"] != run["date"] else run["date"]
        payload = {**run, "date": dates}
    payload["cases"] = sorted(cases.values(), key=lambda r: r["nodeid"])
    bad = [r["nodeid"] for r in payload["cases"] if r["outcome"] not in ("passed", "skipped")]
    if args.docs:
        write_docs(payload, Path(args.docs))
    else:
        print(render(payload))
    if bad:
        print(f"error: {len(bad)} case(s) failed or did not run: {', '.join(bad[:5])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
