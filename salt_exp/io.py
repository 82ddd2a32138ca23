"""Atomic file writes: results are written to a temporary sibling, then renamed.

A crash or a validation failure therefore never leaves a half-written file behind. A process killed outright
(SIGKILL, power loss) cannot remove its temporary file: the next atomic write of the same file removes the
temporaries whose writer (named in them: pid and host) is gone.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it, briefly)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale_temps(dest: Path) -> list[Path]:
    """Remove the temporary siblings of ``dest`` left by a killed writer on this host (``.<name>.<pid>@<host>.<random>
    .tmp`` whose pid is not running); another host's, or a live writer's, are left alone. Returns what it removed."""
    head, host, removed = f".{dest.name}.", socket.gethostname(), []
    try:
        siblings = [p for p in dest.parent.iterdir() if p.name.startswith(head) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for p in siblings:
        owner = p.name[len(head):-len(".tmp")].rpartition(".")[0]
        pid, _, where = owner.partition("@")
        if where == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched; temporaries of ``path`` left by a
    killed writer are removed first (:func:`sweep_stale_temps`).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(dest)
    owner = f"{os.getpid()}@{socket.gethostname()}"
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{owner}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
