"""Machines that share nothing but the network (issue 21): a worker machine lost mid-fold costs no synced epoch.

The servers are PostgreSQL (Optuna's and MLflow's stores) and one ``mlflow server`` over it that proxies the
artifacts (``--artifacts-destination`` on its own disk); each machine is a study driver with its own work folder,
HOME, temp folder, dataset cache, folds folder and copy of the data, reaching the servers only over TCP on
127.0.0.1. Where the kernel allows it (root, ``unshare``), each machine runs in its own mount and UTS namespace: its
own hostname (so the other machine sees it only through its heartbeat, as across real hosts), its data copy bound
at the path the study names, and the other machine's and the servers' folders covered by an empty tmpfs: it cannot
read anything of them. Elsewhere the machines share the hostname and one data copy, and stay apart by their
environment only.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.reliability import reliability
from tests.test_store_faults import Output
from tests.test_study import REPO, check_one_parent_per_trial, runs_of, trials_of, write_study
from tests.test_study import postgres as postgres  # the fixture: a throwaway PostgreSQL server

WAIT = 1800  # seconds per command, a bound for a starved 2-core machine
EPOCHS = (2, 3)  # cycles x epochs per cycle of each fold run
KILL_AFTER = 1  # machine A is killed once its fold run synced the checkpoint after this epoch (a fresh run's first
# sync is never held back by sync.max_overhead; later ones may be, on a slow machine)


def _namespaces() -> bool:
    try:
        subprocess.run(["unshare", "-m", "-u", "--propagation", "private", "true"], check=True, capture_output=True,
                       timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _mlflow_server(backend: str, root: Path) -> tuple[subprocess.Popen, str]:
    from salt_exp.study.server import SERVER_ENV, free_port

    port = free_port()
    (root / "artifacts").mkdir(parents=True)
    log = open(root / "mlflow-server.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", backend,
                             "--artifacts-destination", str(root / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **SERVER_ENV},
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        assert proc.poll() is None, (root / "mlflow-server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # noqa: S310 - local URL
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the mlflow server did not start: " + (root / "mlflow-server.log").read_text()[-3000:])


def _machine(name: str, root: Path, *, study: Path, storage: str, tracking: str, data: Path, hidden: list[Path],
             isolated: bool) -> subprocess.Popen:
    """One machine: a `salt-exp study` driver with its own folders, in its own namespaces when ``isolated``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": tracking, "HOME": str(root / "home"),
           "TMPDIR": str(root / "tmp"), "SALT_EXP_WORK": str(root / "work"), "SALT_EXP_FOLDS": str(root / "folds"),
           "SALT_EXP_CACHE": str(root / "cache")}
    for key in ("HOME", "TMPDIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    driver = [sys.executable, "-m", "salt_exp.cli", "study", str(study), "--storage", storage]
    if not isolated:
        return subprocess.Popen(driver, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps = [f"hostname {name}", f"mount --bind {shlex.quote(str(root / 'data'))} {shlex.quote(str(data))}",
             *(f"mount -t tmpfs -o size=1m none {shlex.quote(str(p))}" for p in hidden),
             "exec " + " ".join(shlex.quote(a) for a in driver)]
    return subprocess.Popen(["unshare", "-m", "-u", "--propagation", "private", "sh", "-c", " && ".join(steps)],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _metric_steps_unique(c: MlflowClient, run_id: str) -> None:
    for key in c.get_run(run_id).data.metrics:
        steps = Counter(m.step for m in c.get_metric_history(run_id, key))
        assert all(n == 1 for n in steps.values()), f"run {run_id}: metric {key} has a step twice: {steps}"


@pytest.mark.slow
@reliability("fault", "machines", "a worker machine SIGKILLed mid-fold (two machines sharing only PostgreSQL and "
             "one mlflow server)",
             "the other machine takes the trial over once its heartbeat stops and resumes the fold after the last "
             "epoch synced to the store: no trial lost or run twice, metric steps unique, each snapshot registered "
             "once, cv_map equal to the uninterrupted trial of the same params and seeds")
def test_a_machine_lost_mid_fold_costs_no_synced_epoch(synth_dir, postgres, tmp_path):
    isolated = _namespaces()
    servers, data = tmp_path / "servers", tmp_path / "data"
    machines = {name: tmp_path / name for name in ("machine-a", "machine-b")}
    server, tracking = _mlflow_server(f"{postgres}/mlflow", servers)
    storage = f"{postgres}/optuna"
    try:
        data.mkdir()
        if not isolated:
            shutil.copytree(synth_dir, data, dirs_exist_ok=True)
        cycles, epochs = EPOCHS
        for root in machines.values():
            root.mkdir()
            shutil.copytree(synth_dir, root / "data")  # each machine its own copy
            write_study(root, "machines", data, n_trials=2, stale_after=10,
                        set={"schedule.cycles": cycles, "schedule.cycle_epochs": epochs, "train.max_train_batches": 2,
                             "train.workers": 0, "train.threads": 1, "train.precision": "fp32",
                             "train.channels_last": False, "sync.max_overhead": 1.0})
        procs = {}
        for name, root in machines.items():
            hidden = [servers, *(r for n, r in machines.items() if n != name)]
            procs[name] = _machine(name, root, study=root / "machines.yaml", storage=storage, tracking=tracking,
                                   data=data, hidden=hidden, isolated=isolated)
            time.sleep(2)  # machine A asks first: it gets trial 0
        outs = {name: Output(p) for name, p in procs.items()}
        a, b = procs["machine-a"], procs["machine-b"]

        # kill machine A once its fold run synced the checkpoint after epoch KILL_AFTER (it has more to go)
        marker = f"synced the checkpoint after epoch {KILL_AFTER} to the store"
        deadline = time.time() + WAIT
        while time.time() < deadline and a.poll() is None and not any(marker in line for line in outs["machine-a"].lines):
            time.sleep(0.2)
        text_a = outs["machine-a"].text()
        assert a.poll() is None, "machine A ended before it could be killed:\n" + text_a[-4000:]
        a.send_signal(signal.SIGKILL)  # the driver runs its worker in-process: the machine is gone
        a.wait()
        lost = next(line for line in outs["machine-a"].lines if marker in line)
        label = lost.split("]", 1)[0] + "]"  # "[machines trial <n> fold 0]"
        number = int(label.split(" trial ", 1)[1].split()[0])
        text_b = outs["machine-b"].finish(WAIT)
        assert b.returncode == 0, text_b[-6000:]
    finally:
        for p in locals().get("procs", {}).values():
            if p.poll() is None:
                p.kill()
        os.killpg(server.pid, signal.SIGKILL)

    # machine B took the trial over and resumed its fold after the synced epoch, not from epoch 0
    lines_b = [line for line in text_b.splitlines() if line.startswith(label)]
    resumed = [line for line in lines_b if "resumed after epoch" in line]
    assert len(resumed) == 1 and f"resumed after epoch {KILL_AFTER} from the store (resume/e{KILL_AFTER:04d}" in resumed[0], \
        "\n".join(lines_b) or text_b[-4000:]
    trained = [int(line.split(" epoch ", 1)[1].split("/", 1)[0]) for line in lines_b if " train_loss " in line]
    assert trained == list(range(KILL_AFTER + 1, EPOCHS[0] * EPOCHS[1] + 1)), lines_b  # from the one after the sync
    synced_b = [line for line in lines_b if "synced the checkpoint after epoch" in line]
    assert synced_b and f"after epoch {KILL_AFTER + 1} to the store" in synced_b[0], lines_b
    assert f"trial {number}" in text_b and "was interrupted" in text_b, text_b[-4000:]

    trials = trials_of("machines", storage)
    by_state = Counter(t.state.name for t in trials)
    assert by_state == {"COMPLETE": 2, "FAIL": 1}, [(t.number, t.state.name, t.user_attrs) for t in trials]
    resume = next(t for t in trials if t.user_attrs.get("salt.resume_of") == number)
    other = next(t for t in trials if t.state.name == "COMPLETE" and t is not resume)
    assert resume.state.name == "COMPLETE" and int(resume.user_attrs["salt.trial"]) == number
    assert resume.params == other.params  # same sampler seed on both machines: the uninterrupted twin
    assert resume.value == pytest.approx(other.value, abs=1e-6), (resume.value, other.value)

    c = MlflowClient(tracking_uri=f"{postgres}/mlflow")
    parents = check_one_parent_per_trial(c, "machines", n_folds=1)
    assert sorted(parents) == sorted({number, int(other.user_attrs["salt.trial"])})
    folds = runs_of(c, "machines", "fold")
    assert len(folds) == 2 and all(r.info.status == "FINISHED" for r in folds)
    for run in folds:
        _metric_steps_unique(c, run.info.run_id)
        # a finished run's synced checkpoint is gone (it is never resumed), its tags with it
        assert "salt.resume.checkpoint" not in run.data.tags
    killed = next(r for r in folds if r.data.tags["salt.trial"] == str(number))
    assert killed.data.tags["salt.resumed_from"].startswith(f"after epoch {KILL_AFTER} from the store")
    synced = [m.step for m in c.get_metric_history(killed.info.run_id, "sync_seconds")]
    # A synced after epoch 1, B (a fresh hook: never held back) after epoch 2 first; no step twice
    assert len(synced) == len(set(synced)) and sorted(synced)[:2] == [KILL_AFTER - 1, KILL_AFTER], synced
    versions = c.search_model_versions("name = 'salt-machines'")
    keys = Counter((v.run_id, v.tags.get("cycle")) for v in versions)
    assert len(keys) == 2 * cycles and all(n == 1 for n in keys.values()), keys
    if isolated:  # nothing of machine A's work folder was readable to B: the checkpoint came through the store
        assert not any(str(machines["machine-a"]) in line for line in lines_b)
    print(json.dumps({"isolated": isolated, "killed_trial": number, "resumed": resumed[0]}))
