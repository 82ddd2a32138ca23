"""A local ``mlflow server`` for a study's parallel workers: several processes must not write one SQLite file.

The server is the one writer; the workers talk to it over HTTP (``MLFLOW_TRACKING_URI``). It is supervised: when it
dies (OOM killer, ``kill -9``) it is started again on the same port over the same store, and the workers' MLflow
calls, which retry with backoff (:data:`CLIENT_RETRY_ENV`), go on where they were; no trial is lost or repeated.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The workers' MLflow HTTP client while a local server may be restarting: 10 tries (MLflow's cap) at backoff factor 2
# sleep 0, 4, 8, ... 64, then 120 s (urllib3's cap) between tries, ~10 min in all (MLflow's default, 7 tries, ~4 min),
# against a restart that takes 15-30 s on an idle 2-core machine and minutes on a starved one. A user's values win.
CLIENT_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}
# MLflow 3's server also starts a job runner and seven huey consumers (GenAI evaluation jobs): 8 more processes
# importing MLflow, which doubles the start (and restart) time on 2 cores; a study never submits a job.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
POLL_S = 0.5  # how often the supervisor looks at the server process


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server can bind ``port`` now (with SO_REUSEADDR, as uvicorn binds: TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the server's whole process group: ``mlflow server`` runs uvicorn as a child, which outlives a killed
    parent and keeps the port."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class LocalServer:
    """``mlflow server`` on 127.0.0.1 over a SQLite store, so that several processes write through one.

    ``with LocalServer(db_uri, artifact_root, log_path) as uri:`` yields ``http://127.0.0.1:<port>``; the server
    runs in its own process group and is stopped (the whole group) on exit. While the block runs a supervisor thread
    restarts a server that died, on the same port and store, at most ``max_restarts`` times, with one ``log`` line
    each time (SQLite rolls back the transaction a killed server left open, so the store is as it was before it).
    ``timeout``: seconds each start may take to answer ``/health`` (15-40 s on an idle 2-core machine).
    """

    def __init__(self, backend_uri: str, artifact_root: Path, log_path: Path, timeout: float = 300.0, *,
                 log: Callable[[str], None] | None = None, max_restarts: int = 5, proxy_artifacts: bool = False) -> None:
        """``proxy_artifacts``: clients upload artifacts through the server (``mlflow-artifacts:``, as machines that
        share no disk with it do) instead of writing ``artifact_root`` themselves."""
        self.backend_uri, self.artifact_root, self.log_path, self.timeout = backend_uri, artifact_root, log_path, timeout
        self.proxy_artifacts = proxy_artifacts
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.max_restarts = max_restarts
        self.proc: subprocess.Popen | None = None
        self.uri, self.port, self.restarts = "", 0, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the supervisor and __exit__ both replace or stop self.proc
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> str:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifact_root.resolve().mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self._stop.set()
            self._shutdown()
            raise
        self._watcher = threading.Thread(target=self._supervise, name="salt-mlflow-server-supervisor", daemon=True)
        self._watcher.start()
        return self.uri

    def _start(self) -> None:
        root = self.artifact_root.resolve().as_uri()
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", self.backend_uri,
               *([] if self.proxy_artifacts else ["--default-artifact-root", root]), "--artifacts-destination", root]
        env = {**os.environ, **{k: v for k, v in SERVER_ENV.items() if k not in os.environ}}
        with self._lock, open(self.log_path, "ab") as log:
            if self._stop.is_set():
                raise RuntimeError("the study is stopping")
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_ready(self.proc)

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        import urllib.request

        deadline = time.time() + self.timeout
        while time.time() < deadline and not self._stop.is_set():
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:  # noqa: S310 - local URL
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        _kill_group(proc)
        if self._stop.is_set():
            raise RuntimeError("the study is stopping")
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {self.timeout:.0f}s; see {self.log_path}")

    def _supervise(self) -> None:
        """Restart the server when its process ends while the study runs."""
        while not self._stop.wait(POLL_S):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            _kill_group(proc)  # a uvicorn child orphaned by a killed parent still holds the port
            if self._stop.is_set():
                return
            if self.restarts >= self.max_restarts:
                self.log(f"mlflow server on {self.uri} died again (exit {proc.returncode}) after {self.restarts} "
                         f"restarts; not restarting it (see {self.log_path}): the workers' trials are requeued when "
                         "their MLflow calls give up; fix the server, then rerun the same command")
                return
            self.restarts += 1
            try:
                self._wait_port_free()
                self._start()
            except RuntimeError as exc:
                if self._stop.is_set():
                    return
                self.log(f"mlflow server restart {self.restarts} failed: {exc}")
                continue  # the loop sees the dead process again and tries once more, up to max_restarts
            self.log(f"mlflow server (pid {proc.pid}) died (exit {proc.returncode}); restarted it on {self.uri} over "
                     f"the same store (pid {self.proc.pid}, restart {self.restarts}/{self.max_restarts}); the "
                     "workers' MLflow calls retried meanwhile")

    def _wait_port_free(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while not port_is_free(self.port):
            if time.time() > deadline or self._stop.is_set():
                raise RuntimeError(f"port {self.port} is still taken {timeout:.0f}s after the server died")
            time.sleep(0.25)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=self.timeout + 30)
        self._shutdown()

    def _shutdown(self) -> None:
        """SIGTERM the server's group (the CLI forwards it to uvicorn), SIGKILL after 20 s."""
        with self._lock:
            proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:
            _kill_group(proc)  # the parent is gone; an orphaned child may not be
            return
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
        _kill_group(proc)
