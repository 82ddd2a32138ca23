"""The code version a run was made with: the git state of the project's own checkout."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout salt_exp runs from (not the caller's folder)


@dataclass(frozen=True)
class GitState:
    commit: str  # bare SHA, or "unknown" outside a git checkout
    dirty: bool  # tracked files changed since the commit
    branch: str  # "" when detached or unknown
    repo_url: str = ""  # the ``origin`` remote, "" when there is none


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


@lru_cache(maxsize=1)
def git_state() -> GitState:
    """Read once per process: a run's tags say what code started the process."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return GitState("unknown", False, "")
    try:
        branch = _git("symbolic-ref", "--short", "-q", "HEAD")
    except subprocess.CalledProcessError:
        branch = ""
    try:
        url = _git("remote", "get-url", "origin")
    except subprocess.CalledProcessError:
        url = ""
    return GitState(commit, dirty, branch, url)


def git_commit() -> str:
    """HEAD commit of the project's checkout, with ``-dirty`` when it has uncommitted changes (for files and
    logs; runs carry the bare SHA and ``mlflow.source.git.dirty``)."""
    g = git_state()
    return g.commit + ("-dirty" if g.dirty else "")
