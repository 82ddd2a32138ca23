"""``salt-exp study``: workers that ask Optuna for trials until the budget is used, resumable.

One worker is a loop: requeue stale trials, stop when the budget (``n_trials`` counted over the
whole study, all workers and invocations) is used or the timeout passed, ask, run, tell. An error
in a trial is recorded (Optuna FAIL + a failure attribute, the trial run's status FAIL) and the loop goes
on; Ctrl-C or SIGTERM requeues the running trial and stops. A failure of the machine rather than of the
trial (a full disk, an MLflow server that does not answer: ``errors.StoreUnavailable``) requeues the trial too
and stops the worker with one line saying what to fix. ``--workers N`` runs N spawned worker processes against
the same storage; with the SQLite MLflow store a local ``mlflow server`` is the one writer, the workers talk to it
over HTTP, and the driver restarts it if it dies (``study.server.LocalServer``).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from salt_exp.contract import TrialAttr, experiment_name
from salt_exp.errors import SaltError, environment_failure, one_line
from salt_exp.signals import term_as_interrupt
from salt_exp.stores import artifact_root, sqlite_path, tracking_uri
from salt_exp.study.recover import Heartbeat, budget_left, over_budget, recover_stale, requeue
from salt_exp.study.server import CLIENT_RETRY_ENV, LocalServer
from salt_exp.study.spec import StudySpec, load_study_spec
from salt_exp.study.storage import open_study
from salt_exp.study.trial import TrialContext, run_trial
from salt_exp.tracking import experiment_id


@dataclass(frozen=True, kw_only=True)
class StudyRequest:
    """What ``salt-exp study`` was asked: the file, where the study lives, and the run-wide knobs."""

    spec_path: str
    storage: str | None = None
    overrides: tuple[str, ...] = ()
    n_trials: int | None = None
    workers: int = 1
    gpus: tuple[str, ...] = ()  # GPU ids the workers take round robin (default: every visible GPU)
    new: bool = False  # set the existing study (journal) aside and start a new one
    ignore_missing: bool = False  # resume although journal and store disagree (recorded on the study)
    torch_threads: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    artifact_root: str | None = None  # the local artifact folder when the workers write through a local server


def _log(spec: StudySpec, text: str) -> None:
    print(f"[study {spec.name} pid {os.getpid()}] {text}", flush=True)


def poll_s(stale_after: float) -> float:
    """How often a worker beats and looks at the other workers' trials: a quarter of ``stale_after`` (so that
    three missed beats are not yet "gone"), at most 30 s."""
    return max(0.5, min(30.0, stale_after / 4))


def _frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


RERUN = "then rerun the same command: the trial was requeued and continues from its checkpoint"


def _run_one(ctx: TrialContext, trial: optuna.Trial, artifact_root: Path | None = None) -> str:
    study, t0 = ctx.study, time.time()
    if os.environ.get("CUDA_VISIBLE_DEVICES"):  # which GPU this worker was given (--workers N, --gpus)
        trial.set_user_attr(TrialAttr.CUDA_DEVICES, os.environ["CUDA_VISIBLE_DEVICES"])
    with Heartbeat(trial, interval=poll_s(ctx.spec.stale_after)):
        try:
            value = run_trial(ctx, trial)
        except optuna.TrialPruned as exc:
            study.tell(trial, state=TrialState.PRUNED)
            _log(ctx.spec, f"trial {trial.number} PRUNED ({exc})")
            return "PRUNED"
        except KeyboardInterrupt:
            requeue(study, _frozen(study, trial.number), "interrupted (Ctrl-C/SIGTERM); resumed by a later trial")
            _log(ctx.spec, f"trial {trial.number} interrupted: requeued, the next run resumes it")
            raise
        except Exception as exc:  # noqa: BLE001 - one trial's error is recorded and the study goes on
            failure = environment_failure(exc, artifact_root=artifact_root, rerun=RERUN)
            if failure is not None:  # the machine's fault, not the trial's: no FAIL, the rerun resumes it
                try:
                    requeue(study, _frozen(study, trial.number), f"stopped: {failure}")
                    _log(ctx.spec, f"trial {trial.number} stopped and requeued: {failure}")
                except Exception as again:  # noqa: BLE001 - e.g. the journal on the same full disk
                    _log(ctx.spec, f"trial {trial.number} stopped, not requeued now ({one_line(again)}); the next "
                                   "run requeues it, its worker being gone")
                raise failure from exc
            trial.set_user_attr(TrialAttr.FAILURE, one_line(exc))
            study.tell(trial, state=TrialState.FAIL)
            _log(ctx.spec, f"trial {trial.number} FAIL: {one_line(exc)}")
            return "FAIL"
    study.tell(trial, value)
    _log(ctx.spec, f"trial {trial.number} COMPLETE cv_map={value:.4f} ({time.time() - t0:.0f}s)")
    return "COMPLETE"


def run_worker(req: StudyRequest) -> list[tuple[int, str]]:
    """Run trials of the study until its budget is used or the timeout passes; returns (number, state)."""
    spec = load_study_spec(req.spec_path, req.overrides)
    n_trials = spec.n_trials if req.n_trials is None else req.n_trials
    study = open_study(spec, req.storage)
    ctx = TrialContext(study, spec, spec.base_config(), n_trials=n_trials)
    deadline = None if spec.timeout is None else time.time() + spec.timeout
    root = Path(req.artifact_root) if req.artifact_root else None
    done: list[tuple[int, str]] = []
    announced: list[int] = []
    with term_as_interrupt():  # SIGTERM like Ctrl-C: the running trial is requeued
        while deadline is None or time.time() < deadline:
            for number in recover_stale(study, spec.stale_after):
                _log(spec, f"trial {number} was interrupted (worker gone): requeued to resume")
            if not budget_left(study, n_trials):
                # other machines' trials may still be lost: stay until they end or go stale (then run them)
                running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                if not running:
                    break
                waiting = sorted(t.number for t in running)
                if waiting != announced:
                    announced = waiting
                    owners = ", ".join(f"{t.number} ({t.user_attrs.get(TrialAttr.WORKER, 'not claimed yet')})"
                                       for t in running)
                    _log(spec, f"the trial budget is used; waiting for running trial(s) {owners} to finish, or to "
                               f"take over any whose worker goes silent for stale_after={spec.stale_after:g}s")
                time.sleep(min(5.0, poll_s(spec.stale_after)))  # a finished sibling is noticed within 5 s
                continue
            trial = study.ask()
            if over_budget(study, trial, n_trials):
                trial.set_user_attr(TrialAttr.SKIPPED, "over budget: another worker asked at the same time")
                study.tell(trial, state=TrialState.FAIL)
                break
            done.append((trial.number, _run_one(ctx, trial, root)))
    return done


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the driver dies (even by SIGKILL), so it requeues its trial."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_entry(req: StudyRequest) -> None:
    _die_with_parent()
    os.environ.update(req.env)
    if req.torch_threads:
        import torch

        torch.set_num_threads(req.torch_threads)
    try:
        run_worker(req)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except SaltError as exc:  # e.g. the store unavailable: its trial was requeued; one line, not a traceback
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def gpu_assignment(workers: int, gpus: tuple[str, ...] = ()) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each worker: ``gpus`` (else every GPU this process sees, by its real id when
    CUDA_VISIBLE_DEVICES already narrows them) round robin; None for every worker on a machine without one."""
    pool = list(gpus)
    if not pool:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        pool = visible[:count] if visible else [str(i) for i in range(count)]
    return [pool[i % len(pool)] if pool else None for i in range(workers)]


def _spawn(req: StudyRequest, uri: str) -> list[int]:
    threads = max(1, (os.cpu_count() or 1) // req.workers)
    child = replace(req, workers=1, torch_threads=threads, env={**req.env, "MLFLOW_TRACKING_URI": uri})
    mp = multiprocessing.get_context("spawn")  # never fork a process that may hold torch/MLflow threads
    devices = gpu_assignment(req.workers, req.gpus)
    children = [child if d is None else replace(child, env={**child.env, "CUDA_VISIBLE_DEVICES": d}) for d in devices]
    if any(devices):
        _log(load_study_spec(req.spec_path, req.overrides), "GPUs per worker: " + ", ".join(
            f"worker {i}: cuda {d}" for i, d in enumerate(devices)))
    procs = [mp.Process(target=_worker_entry, args=(c,), name=f"salt-study-worker-{i}") for i, c in enumerate(children)]
    try:
        with term_as_interrupt():
            for p in procs:
                p.start()
                time.sleep(1.0)  # stagger the first asks a little
            for p in procs:
                p.join()
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: each worker requeues its trial
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        raise
    return [p.exitcode for p in procs]


def estimate_cost(req: StudyRequest):
    """The study's cost before it starts (``study.cost.StudyCost``): the trials it has left to run."""
    from salt_exp.study.cost import study_cost
    from salt_exp.study.recover import counted_trials

    spec = load_study_spec(req.spec_path, req.overrides)
    n_trials = spec.n_trials if req.n_trials is None else req.n_trials
    done = 0 if req.new else len(counted_trials(open_study(spec, req.storage).get_trials(deepcopy=False)))
    return study_cost(spec, max(0, n_trials - done))


def in_step(spec: StudySpec, req: StudyRequest, study: optuna.Study) -> optuna.Study:
    """The study to run: this one when journal and store agree, a fresh one with ``--new``, this one with the
    disagreement recorded under ``--ignore-missing``; else SaltError naming both stores and what is missing."""
    from salt_exp.study.consistency import NEW_ATTR, accept_mismatch, set_aside, store_mismatch
    from salt_exp.study.storage import default_storage_url, study_uid

    journal = req.storage or default_storage_url(spec.name)
    mismatch = store_mismatch(study, spec.name, journal)
    if req.new:
        where = set_aside(study, spec.name, journal)
        study = open_study(spec, req.storage)
        why = f"--new at {time.strftime('%Y-%m-%d %H:%M:%S')}; the previous study was set aside as {where}"
        study.set_user_attr(NEW_ATTR, why + (f" ({mismatch.line()})" if mismatch else ""))
        _log(spec, f"new study (uid {study_uid(study)}): {why}")
        return study
    if mismatch is None:
        return study
    if req.ignore_missing:
        accept_mismatch(study, mismatch)
        _log(spec, f"continuing without the missing trials (--ignore-missing, recorded on the study): {mismatch.line()}")
        return study
    raise SaltError(mismatch.line())


def run_study(req: StudyRequest) -> list[int]:
    """The driver: validate, create/load the study, requeue stale trials, then run 1 or N workers.

    Returns the workers' exit codes ([0] for the in-process worker).
    """
    spec = load_study_spec(req.spec_path, req.overrides)
    study = in_step(spec, req, open_study(spec, req.storage))
    experiment_id(experiment_name(spec.name))  # creates it now: its artifact location is fixed before any server starts
    for number in recover_stale(study, spec.stale_after):
        _log(spec, f"trial {number} was interrupted (worker gone): requeued to resume")
    if req.workers <= 1:
        run_worker(req)
        return [0]
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is None:
        return _spawn(req, uri)  # a server or a PostgreSQL store already takes concurrent writers
    root = artifact_root(uri)
    server = LocalServer(uri, root, db.parent / "mlflow-server.log", log=lambda text: _log(spec, text))
    with server as server_uri:
        _log(spec, f"{req.workers} workers; MLflow through a local server at {server_uri} (pid {server.proc.pid}, "
                   "restarted if it dies)")
        from salt_exp.ui import DEFAULT_UI, UI_ENV

        # links the workers write point at `make ui`, not at this server, which stops with the study; their MLflow
        # calls retry long enough to outlast a restart of the server
        retry = {k: v for k, v in CLIENT_RETRY_ENV.items() if k not in os.environ}
        env = {UI_ENV: DEFAULT_UI, **retry, **req.env}
        return _spawn(replace(req, env=env, artifact_root=str(root.resolve())), server_uri)
