"""Named fail points for fault-injection tests (issue 23's fault matrix, ``tests/test_faults.py``).

``fault_point(name)`` does nothing unless ``$SALT_EXP_FAULT`` names that point: ``name`` (the first time this process
reaches it) or ``name@N`` (the N-th time). Then the process prints one line to stderr and SIGKILLs itself: a real
death at that exact write, not an exception, so no ``finally``, ``atexit`` or MLflow cleanup runs, as when the
machine's OOM killer, a preempted VM or ``kill -9`` stops a run. A rerun of the same command without the variable
must then end in the store an uninterrupted run leaves.

The points, in the order a fold run and an ensemble reach them:

- ``fold.after_epoch_metrics``: ``MLflowHook.on_epoch``, an epoch's metric batch is logged (``last.pt`` was saved
  before it); the cycle's snapshot, if the epoch ends one, is not yet published;
- ``snapshot.after_bins_table``: ``MLflowHook.on_snapshot``, the snapshot's ``snapshots/cycle_<c>/coverage_bins.json``
  is written; its figure, ``oof.npz``, logged model and registry version are not;
- ``registry.before_create_version``: ``RunTracker.register_version``, the registered model exists and holds no
  version of this key; ``create_model_version`` is not yet called;
- ``registry.after_create_version``: ``RunTracker.register_version``, ``create_model_version`` returned; the caller
  has not recorded it (a fold run's ``published`` list in ``last.pt``, an ensemble's alias);
- ``submission.half_written``: ``ensemble.build.write_submission``, half the rows are in the temporary file, before
  the rename onto ``submissions/<study>.csv`` (so the submission is never seen half-written).
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "SALT_EXP_FAULT"
POINTS = ("fold.after_epoch_metrics", "snapshot.after_bins_table", "registry.before_create_version",
          "registry.after_create_version", "submission.half_written")

_hits: dict[str, int] = {}  # how often this process reached each armed point


def armed() -> tuple[str, int] | None:
    """(point, N) that ``$SALT_EXP_FAULT`` names, None when unset; ValueError for a malformed value (a test's typo
    must not pass as "never reached")."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    name, _, nth = spec.partition("@")
    if name not in POINTS or (nth and not (nth.isdigit() and int(nth) >= 1)):
        raise ValueError(f"${ENV}={spec!r}: expected one of {', '.join(POINTS)}, optionally @N with N >= 1")
    return name, int(nth or 1)


def fault_point(name: str) -> None:
    """Die here by SIGKILL when ``$SALT_EXP_FAULT`` arms this point and this is its N-th hit; else nothing."""
    target = armed()
    if target is None or target[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == target[1]:
        sys.stdout.flush()
        print(f"fault: SIGKILL at {name} (hit {target[1]})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
