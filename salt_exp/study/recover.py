"""Resuming interrupted trials without duplicates, and the trial budget shared by all workers.

A worker writes ``TrialAttr.WORKER`` (``host:pid:process start time``) on each trial it runs and
refreshes ``TrialAttr.HEARTBEAT`` (unix time) while it runs. A RUNNING trial is *stale* when its worker
is gone: on the same host the process no longer exists (pid + start time, so a reused pid does not
count), on another host its heartbeat is older than ``stale_after``.

A stale or interrupted trial is *requeued*: it is moved to FAIL (the move is the claim: the
storage refuses a second move of a finished trial, so exactly one worker wins), then its exact
params are enqueued with ``TrialAttr.RESUME_OF=<its number>`` and ``TrialAttr.MLFLOW_TRIAL=<its MLflow
trial number>``.
The new trial reuses that MLflow trial number, hence the same parent run, and its fold runs are
found by study/trial/fold/config hash and continued from their checkpoints: no duplicate trial
in the budget, parent run, fold run or registry version.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import optuna
import psutil
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from salt_exp.contract import TrialAttr

WORKER, HEARTBEAT, MLFLOW_TRIAL = TrialAttr.WORKER, TrialAttr.HEARTBEAT, TrialAttr.MLFLOW_TRIAL
RESUME_OF, FAILURE, SKIPPED = TrialAttr.RESUME_OF, TrialAttr.FAILURE, TrialAttr.SKIPPED


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(psutil.Process().create_time())}"


def worker_alive(wid: str, heartbeat: float | None, stale_after: float, now: float) -> bool:
    host, _, rest = wid.partition(":")
    pid, _, started = rest.partition(":")
    if host == socket.gethostname():
        try:
            return int(psutil.Process(int(pid)).create_time()) == int(started)
        except (psutil.Error, ValueError):
            return False
    return heartbeat is not None and now - heartbeat < stale_after


def mlflow_trial_number(number: int, user_attrs: dict) -> int:
    """The trial number MLflow knows a trial by: the first attempt's number for a resumed trial."""
    return int(user_attrs.get(MLFLOW_TRIAL, number))


def is_stale(t: FrozenTrial, stale_after: float, now: float) -> bool:
    if t.state != TrialState.RUNNING:
        return False
    wid = t.user_attrs.get(WORKER)
    if wid is None:  # asked but not yet claimed by a worker: give it the grace period
        started = t.datetime_start.timestamp() if t.datetime_start else now
        return now - started > stale_after
    return not worker_alive(wid, t.user_attrs.get(HEARTBEAT), stale_after, now)


def requeue(study: optuna.Study, t: FrozenTrial, why: str) -> bool:
    """Fail ``t`` and enqueue its params as a resume of it; False when another worker got there first."""
    storage = study._storage  # noqa: SLF001 - per-trial state moves need the storage itself
    try:
        storage.set_trial_user_attr(t._trial_id, FAILURE, why)  # noqa: SLF001
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
    except UpdateFinishedTrialError:
        return False
    study.enqueue_trial(dict(t.params), user_attrs={RESUME_OF: t.number, MLFLOW_TRIAL: mlflow_trial_number(t.number, t.user_attrs)})
    return True


def recover_stale(study: optuna.Study, stale_after: float) -> list[int]:
    """Requeue every stale RUNNING trial; returns the numbers this call requeued."""
    now = time.time()
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if is_stale(t, stale_after, now)]
    return [t.number for t in stale if requeue(study, t, "interrupted: its worker is gone; resumed by a later trial")]


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that use the budget: started, not superseded by a resume, not skipped."""
    superseded = {t.user_attrs[RESUME_OF] for t in trials if RESUME_OF in t.user_attrs}
    return [t for t in trials if t.state != TrialState.WAITING and t.number not in superseded
            and SKIPPED not in t.user_attrs]


def budget_left(study: optuna.Study, n_trials: int) -> bool:
    return len(counted_trials(study.get_trials(deepcopy=False))) < n_trials


def over_budget(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Two workers that asked at once can overshoot: the later trial (by number) yields, unless it is a resume."""
    if RESUME_OF in trial.user_attrs:
        return False
    before = [t for t in counted_trials(study.get_trials(deepcopy=False)) if t.number < trial.number]
    return len(before) >= n_trials


class Heartbeat:
    """Marks ``trial`` as owned by this process and refreshes its heartbeat every ``interval`` s."""

    def __init__(self, trial: optuna.Trial, interval: float = 30.0) -> None:
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="salt-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except Exception:  # noqa: BLE001 - a missed beat only makes the trial look older
                pass

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr(WORKER, worker_id())
        self.trial.set_user_attr(HEARTBEAT, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
