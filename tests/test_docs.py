"""The docs and the Makefile agree: every `make ...` command in README.md and docs/ is one the Makefile runs
as written (its target exists, every VAR=value it passes is a variable the Makefile reads)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SPAN = re.compile(r"`(make [^`]+)`")  # an inline code span


def make_commands() -> list[tuple[str, str]]:
    """(doc, command) for each code-block line that starts with ``make `` and each inline ``make ...`` span;
    optional parts in [brackets] are kept (without the brackets), comments dropped."""
    found = []
    for doc in DOCS:
        fenced = False
        for line in doc.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            cmds = [line.split("  #")[0].strip()] if fenced and line.startswith("make ") else SPAN.findall(line)
            cmds = [re.split(r"&&|;|\|", c)[0] for c in cmds]  # the make part of `make data && ...`
            found += [(doc.name, " ".join(c.replace("[", " ").replace("]", " ").split())) for c in cmds]
    return found


def test_docs_hold_make_commands():
    commands = make_commands()
    assert len(commands) >= 10 and any(c == "make study NAME=quickstart" for _, c in commands)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("doc,command", make_commands())
def test_every_documented_make_command_is_one_the_makefile_runs(doc, command):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    words = shlex.split(command)[1:]
    targets = [w for w in words if "=" not in w and not w.startswith("-")]
    for var in (w.split("=", 1)[0] for w in words if "=" in w):
        assert f"$({var})" in makefile, f"{doc}: `{command}` sets {var}, which the Makefile never reads"
    out = subprocess.run(["make", "-n", *words], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{doc}: `{command}`: {out.stderr.strip()[-500:]}"
    assert targets, f"{doc}: `{command}` names no target"


def test_reliability_page_lists_exactly_the_cases_the_suite_holds(tmp_path):
    """docs/RELIABILITY.md's tables are generated from a test run (`make reliability`); a case added, renamed or
    removed without regenerating them fails here."""
    import json
    import os
    import sys

    from tests.reliability import OUT_ENV, case_key, documented_cases

    out = tmp_path / "cases.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "reliability", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, OUT_ENV: str(out)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cases = {case_key(r) for r in json.loads(out.read_text())["cases"]}
    assert len(cases) >= 10, cases
    documented = documented_cases(ROOT / "docs" / "RELIABILITY.md")
    missing, stale = sorted(cases - documented), sorted(documented - cases)
    assert not missing and not stale, (f"docs/RELIABILITY.md is out of date (run `make reliability`): "
                                       f"not listed {missing[:5]}, listed but gone {stale[:5]}")
