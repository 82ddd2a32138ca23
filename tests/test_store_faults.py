"""The fault matrix's store faults (issue 23): the study's MLflow server SIGKILLed under two workers, a tracking
server that stays down, and the disk of the artifact root full. Real processes, a real ``mlflow server``, a real
size-limited tmpfs; the rerun (where one is needed) must end in the store an uninterrupted run leaves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.reliability import reliability
from tests.test_faults import Store, assert_same_store, fingerprint, ok
from tests.test_study import _driver, check_one_parent_per_trial, runs_of, trials_of, write_study

WAIT = 1800  # seconds per command, a bound for a starved 2-core machine (a study of two tiny trials: ~2 min idle)


class Output:
    """A subprocess's merged output, drained by a thread (a full pipe would stall the study) and searchable live."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def finish(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout=30)
        return self.text()


def _server_group(driver: subprocess.Popen) -> int | None:
    """The process group of the driver's ``mlflow server`` (its leader's pid), None before it runs."""
    for child in psutil.Process(driver.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if cmd[1:4] == ["-m", "mlflow", "server"]:
            return os.getpgid(child.pid)
    return None


def _no_half_written_files(root: Path) -> int:
    """Every file under the artifact root reads back whole (weights, tables, OOF, model metadata); returns the count."""
    import torch
    import yaml

    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        assert not p.name.endswith(".tmp") and not p.name.startswith("."), f"a temporary file is visible: {p}"
        if p.suffix == ".pt":
            assert "state_dict" in torch.load(p, map_location="cpu", weights_only=True), p
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".npz":
            with np.load(p) as z:
                [z[k] for k in z.files]
        elif p.name == "MLmodel":
            assert yaml.safe_load(p.read_text())["flavors"], p
    return len(files)


# ---------------------------------------------------------------- the study's MLflow server


@pytest.mark.slow
@reliability("fault", "study server", "mlflow server SIGKILLed and restarted under two workers",
             "the driver restarts it on the same port and store with one log line; the same study finishes (exit 0): "
             "each trial COMPLETE once, one parent and one fold run per trial, metric steps unique, one registry "
             "version and one READY logged model per (run, cycle), the study file's counts, no half-written file")
def test_mlflow_server_sigkilled_under_two_workers_is_restarted_and_the_study_finishes(synth_dir, mlflow_store,
                                                                                      tmp_path):
    cycles, epochs = 2, 2
    path = write_study(tmp_path, "srvkill", synth_dir, n_trials=2, folds=[0],
                       set={"schedule.cycles": cycles, "schedule.cycle_epochs": epochs, "train.max_train_batches": 2})
    proc = _driver([str(path), "--workers", "2"], tmp_path)
    out = Output(proc)
    try:
        # kill while both trials train: each fold run has finished an epoch (its last.pt) and has more to go
        deadline = time.time() + WAIT
        while time.time() < deadline and proc.poll() is None and len(list((tmp_path / "work").glob("*/last.pt"))) < 2:
            time.sleep(0.2)
        assert proc.poll() is None, "the study ended before its server could be killed:\n" + out.text()[-3000:]
        group = _server_group(proc)
        assert group is not None, out.text()[-3000:]
        os.killpg(group, signal.SIGKILL)  # the whole server: the mlflow CLI and its uvicorn
        text = out.finish(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text[-5000:]
    port = text.split("local server at http://127.0.0.1:", 1)[1].split()[0]
    restarts = [line for line in text.splitlines() if "restarted it on" in line]
    assert len(restarts) == 1 and f"http://127.0.0.1:{port} over the same store" in restarts[0], text[-5000:]
    assert f"mlflow server (pid {group}) died (exit -9)" in restarts[0], restarts

    trials = trials_of("srvkill")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], text[-3000:]
    assert not any("salt.resume_of" in t.user_attrs for t in trials), "a trial was requeued, not carried through"
    c = MlflowClient(mlflow_store)
    parents = check_one_parent_per_trial(c, "srvkill", n_folds=1)
    assert sorted(parents) == [0, 1]
    folds = runs_of(c, "srvkill", "fold")
    assert sorted((f.data.tags["salt.trial"], f.data.tags["salt.fold"]) for f in folds) == [("0", "0"), ("1", "0")]
    assert {f.info.status for f in folds} == {"FINISHED"}
    for run in [*folds, *parents.values()]:
        for key in run.data.metrics:
            steps = [m.step for m in c.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"run {run.info.run_id}: {key} steps {steps}"
    for f in folds:
        assert sorted(m.step for m in c.get_metric_history(f.info.run_id, "val_map")) == list(range(cycles * epochs))
    versions = c.search_model_versions("name='salt-srvkill'")
    keys = sorted((v.run_id, v.tags["cycle"]) for v in versions)
    assert keys == sorted((f.info.run_id, str(k)) for f in folds for k in range(cycles)), keys
    exp = c.get_experiment_by_name("salt/srvkill").experiment_id
    models = c.search_logged_models([exp], max_results=100)
    assert sorted((m.source_run_id, m.name, m.status.name) for m in models) == sorted(
        (f.info.run_id, f"fold0-cycle{k}", "READY") for f in folds for k in range(cycles))
    assert {v.source for v in versions} == {f"models:/{m.model_id}" for m in models}
    assert _no_half_written_files(tmp_path / "mlruns" / "artifacts") > 0


class BreakingServer:
    """An HTTP server that answers MLflow's ``experiments/get-by-name`` but breaks off its first ``broken``
    responses after 2 of their promised bytes, then drops the connection: what a client sees of a tracking
    server SIGKILLed while it writes a response (the CI failure: ``IncompleteRead(0 bytes read, 2 more
    expected)``), at a moment a test can choose."""

    def __init__(self, broken: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.broken, self.requests = broken, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                body = json.dumps({"experiment": {"experiment_id": "7", "name": "salt/x", "artifact_location": "",
                                                  "lifecycle_stage": "active"}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if len(outer.requests) <= outer.broken:
                    self.wfile.write(body[:2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@reliability("fault", "study server", "a response broken off midway (server killed while it answers)",
             "the request is sent again, up to MLFLOW_HTTP_REQUEST_MAX_RETRIES times, and the call returns the "
             "whole answer; when every try breaks off, the error is one line naming the server and the retries")
def test_a_response_broken_off_midway_is_sent_again_and_one_line_when_every_try_breaks(monkeypatch):
    import salt_exp.tracking.store as store
    from salt_exp.errors import environment_failure

    monkeypatch.setattr(store, "RESEND_WAIT_S", 0.01)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    server = BreakingServer(broken=2)
    try:
        exp = MlflowClient(server.url).get_experiment_by_name("salt/x")
        assert exp.experiment_id == "7"
        assert len(server.requests) == 3 and all("get-by-name" in r for r in server.requests), server.requests
    finally:
        server.close()

    server = BreakingServer(broken=10)
    try:
        with pytest.raises(Exception) as caught:
            MlflowClient(server.url).get_experiment_by_name("salt/x")
        assert len(server.requests) == 3, server.requests  # the first try and 2 resends, then it gives up
        line = str(environment_failure(caught.value, rerun="run it again"))
        assert f"the MLflow tracking server {server.url} does not answer" in line, line
        assert "its response broke off midway" in line and "after 2 retries" in line and "\n" not in line, line
    finally:
        server.close()


@pytest.mark.slow
@reliability("fault", "study server", "mlflow server's CLI SIGKILLed alone (its uvicorn child keeps the port)",
             "the supervisor ends the orphan, restarts the server on the same port with one line; the same store "
             "answers through it; nothing of it outlives the study")
def test_local_server_whose_cli_is_killed_is_restarted_although_its_uvicorn_child_held_the_port(tmp_path):
    """``mlflow server`` runs uvicorn as a child: SIGKILL of the parent alone leaves uvicorn serving the port. The
    supervisor must end that orphan and start a server again on the same port, over the same store."""
    from salt_exp.study.server import LocalServer

    lines: list[str] = []
    server = LocalServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", tmp_path / "server.log",
                         log=lines.append)
    with server as uri:
        c = MlflowClient(uri)
        run = c.create_run(c.create_experiment("x"))
        first = server.proc.pid
        orphans = psutil.Process(first).children(recursive=True)
        assert any("uvicorn" in " ".join(p.cmdline()) for p in orphans), [p.cmdline() for p in orphans]
        os.kill(first, signal.SIGKILL)  # the CLI only
        deadline = time.time() + WAIT
        while time.time() < deadline and not lines:
            time.sleep(0.5)
        assert lines and f"mlflow server (pid {first}) died (exit -9); restarted it on {uri}" in lines[0], lines
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in orphans), "an orphan lives on"
        c.log_metric(run.info.run_id, "m", 1.0, step=0)  # the same store, through the new server
        assert [m.step for m in c.get_metric_history(run.info.run_id, "m")] == [0]
        second = server.proc
    assert second.poll() is not None, "the restarted server outlived the block"


@pytest.mark.slow
@reliability("fault", "study server", "MLflow tracking server down for good (a worker's retries run out)",
             "the worker stops with one line naming the server and saying to rerun; its trial is requeued, not FAIL; "
             "`salt-exp study` rerun with the store back runs it: the trial COMPLETE once, one parent, its fold "
             "FINISHED")
def test_a_tracking_server_that_stays_down_requeues_the_trial_then_the_rerun_completes_it(synth_dir, mlflow_store,
                                                                                         tmp_path, monkeypatch):
    from salt_exp.errors import StoreUnavailable
    from salt_exp.study.driver import StudyRequest, run_worker
    from salt_exp.study.server import free_port

    path = write_study(tmp_path, "down", synth_dir, n_trials=1)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a server that died and was not restarted
    with monkeypatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", down)
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        with pytest.raises(StoreUnavailable) as err:
            run_worker(StudyRequest(spec_path=str(path)))
    line = str(err.value)
    assert "\n" not in line and f"the MLflow tracking server {down} does not answer ([Errno 111]" in line, line
    assert "rerun the same command" in line, line
    trials = trials_of("down")
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"], "the trial must be requeued, not failed"
    assert trials[1].user_attrs["salt.resume_of"] == 0 and "does not answer" in trials[0].user_attrs["salt.failure"]
    proc = _driver([str(path)], tmp_path)  # the same command, the store back (the test's SQLite store)
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out[-4000:]
    trials = trials_of("down")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], out[-3000:]
    c = MlflowClient(mlflow_store)
    assert sorted(check_one_parent_per_trial(c, "down", n_folds=1)) == [0]
    assert [f.info.status for f in runs_of(c, "down", "fold")] == ["FINISHED"]


# ---------------------------------------------------------------- the disk of the artifact root full


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                       capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        why = getattr(exc, "stderr", None) or str(exc)
        pytest.skip(f"cannot mount a size-limited tmpfs here: {' '.join(str(why).split())}")


SMALL, LARGE = "8m", "160m"  # the run's first files and a model's code fit in 8 MiB, a snapshot's 20 MB weights do not


@pytest.mark.slow
@reliability("fault", "artifact store", "disk full for the artifact root",
             "exit 1 with one `error:` line naming the artifact root, `no space left` and to rerun; runs FAILED or "
             "KILLED, not RUNNING; no half-written file, no version of a missing model; after more space the same "
             "command ends in the uninterrupted run's store (runs, steps, values, artifacts, models, versions)")
def test_disk_full_for_the_artifact_root_stops_in_one_line_then_the_rerun_completes(synth_dir, tmp_path,
                                                                                   tmp_path_factory, template, request):
    store = Store(tmp_path / "store", synth_dir, tmp_path_factory.getbasetemp(), template)
    root = store.root / "mlruns" / "artifacts"
    _mount_tmpfs(root, SMALL)  # skips where mounting is not allowed, before the baseline is paid for
    try:
        baseline = request.getfixturevalue("baseline").cv  # tests.test_faults' cv run, shared by the session
        failed = store.cv()
        errors = [line for line in failed.stdout.splitlines() if line.startswith("error:")]
        assert failed.returncode == 1 and len(errors) == 1 and "Traceback" not in failed.stdout, failed.stdout[-4000:]
        line = errors[0]
        assert f"no space left on device in the artifact root {root.resolve()}" in line, line
        assert "free space there, then rerun the same command" in line, line
        c = MlflowClient(store.uri)
        exp = c.get_experiment_by_name("salt/faults").experiment_id
        runs = c.search_runs([exp])
        assert sorted(r.data.tags["salt.role"] for r in runs) == ["cv", "fold"]
        assert all(r.info.status in ("FAILED", "KILLED") for r in runs), [r.info.status for r in runs]
        assert _no_half_written_files(root) > 0
        assert not list(root.rglob("*.pt")), "a snapshot's weights did not fit: none may be visible"
        assert not c.search_logged_models([exp]), "a model whose upload failed is left visible"
        for v in c.search_model_versions("name='salt-faults'"):  # none expected; any must point at a whole model
            assert c.get_logged_model(v.source.removeprefix("models:/")).status.name == "READY"
        assert c.search_model_versions("name='salt-faults'") == []

        subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(root)], check=True, capture_output=True, timeout=60)
        ok(store.cv())  # the same command
        assert_same_store(fingerprint(store), baseline)
        assert _no_half_written_files(root) > 0
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=60)
