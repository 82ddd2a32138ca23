"""The one exception type the CLI turns into a one-line error message, and the failures that are the machine's.

A full disk under a store, or a tracking server that does not answer, is not the run's fault: retrying the same
config elsewhere would fail the same way, and the same command succeeds once the machine is fixed.
:func:`environment_failure` recognises them anywhere in an exception's chain and says, in one line, what broke,
where, and what to do; the run is left resumable (a study requeues the trial instead of recording it as FAIL).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


class SaltError(Exception):
    """A user-facing error: bad input, missing file, invalid config.

    The message is a single line that names the file or field and says what was
    expected. ``salt-exp`` prints it as ``error: <message>`` and exits with status 1 (2 is argparse's usage error).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class StoreUnavailable(SaltError):
    """The machine stopped the run, not its config: a store's disk is full or the tracking server does not answer.

    Nothing is wrong with what was being trained; the fix is outside the run (free space, start the server), then
    the same command continues it. A study requeues such a trial instead of failing it, and its worker stops.
    """


def one_line(exc: BaseException) -> str:
    """``Type: message`` of any exception on one line (at most 500 characters), for tags and logs."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
RERUN = "then rerun the same command (salt-exp train: with --resume)"
_API_REQUEST = re.compile(r"API request to (\S+) failed with")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it (``raise ... from``) or was being handled when it was raised, breadth first."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 32:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def environment_failure(exc: BaseException, *, artifact_root: Path | None = None,
                        rerun: str = RERUN) -> StoreUnavailable | None:
    """The one-line :class:`StoreUnavailable` for ``exc`` when it (or anything in its chain) is a full disk or an
    MLflow server that does not answer; None for any other error.

    A full disk: the file being written when space ran out, when it lies under the local ``artifact_root`` (default:
    the SQLite store's ``artifacts/``), is a half-written artifact; it is removed here, so that a resumed run does not
    take it for a complete one. ``rerun``: what to do once the machine is fixed.
    """
    for e in _chain(exc):
        if isinstance(e, StoreUnavailable):
            return e
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return StoreUnavailable(_disk_full_line(e, artifact_root, rerun))
    server = _unreachable_server(exc)
    if server is not None:
        tries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")  # MLflow's default
        return StoreUnavailable(f"the MLflow tracking server {server[0]} does not answer ({server[1]}, after "
                                f"{tries} retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES): start it again (a study's own "
                                f"local server is restarted by the study; see mlruns/mlflow-server.log), {rerun}")
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _usage(path: Path) -> str:
    """``<free> free of <size>`` of the filesystem holding ``path`` (its nearest existing folder)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                u = shutil.disk_usage(folder)
            except OSError:
                return "free space unknown"
            return f"{_size(u.free)} free of {_size(u.total)}"
    return "free space unknown"


def _disk_full_line(e: OSError, artifact_root: Path | None, rerun: str) -> str:
    from salt_exp.stores import artifact_root as store_artifacts
    from salt_exp.stores import tracking_uri

    root = artifact_root or store_artifacts(tracking_uri())
    root = root.resolve() if root is not None else None
    name = e.filename2 if e.filename2 is not None else e.filename  # shutil's copies name (source, destination)
    dest = Path(name).resolve() if isinstance(name, str | Path) else None
    inside = root is not None and dest is not None and dest.is_relative_to(root)
    if inside:
        where = f"in the artifact root {root} ({_usage(root)}; writing {dest.relative_to(root)})"
    elif dest is not None:
        where = f"writing {dest} ({_usage(dest)})"
    else:
        where = f"({one_line(e)})"
    removed = ""
    if inside and dest.is_file():
        try:
            dest.unlink()
            removed = "; the half-written file was removed"
        except OSError:
            removed = f"; remove the half-written {dest}"
    return f"no space left on device {where}: free space there, {rerun}{removed}"


def _unreachable_server(exc: BaseException) -> tuple[str, str] | None:
    """(server address, why) when an MLflow REST call in ``exc``'s chain could not reach its server."""
    try:
        import requests
    except ImportError:  # pragma: no cover - MLflow depends on it
        return None
    url = reason = None
    for e in _chain(exc):
        m = _API_REQUEST.search(str(e))
        if m and url is None:
            url = m.group(1)
        if isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout |
                      requests.exceptions.RetryError | requests.exceptions.ChunkedEncodingError) and reason is None:
            found = _ERRNO.search(str(e))
            reason = (found.group(0).strip() if found else
                      "timed out" if isinstance(e, requests.exceptions.Timeout) else
                      "its response broke off midway" if isinstance(e, requests.exceptions.ChunkedEncodingError) else
                      type(e).__name__)
    if url is None or reason is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}", reason
