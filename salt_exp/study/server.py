"""A local ``mlflow server`` for a study's parallel workers: several processes must not write one SQLite file.

The server is the one writer; the workers talk to it over HTTP (``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServer:
    """``mlflow server`` on 127.0.0.1 over a SQLite store, so that several processes write through one.

    ``with LocalServer(db_uri, artifact_root) as uri:`` yields ``http://127.0.0.1:<port>``; the server
    runs in its own process group and is stopped (the whole group) on exit.
    """

    def __init__(self, backend_uri: str, artifact_root: Path, log_path: Path, timeout: float = 120.0) -> None:
        self.backend_uri, self.artifact_root, self.log_path, self.timeout = backend_uri, artifact_root, log_path, timeout
        self.proc: subprocess.Popen | None = None
        self.uri = ""

    def __enter__(self) -> str:
        import sys

        port = free_port()
        self.uri = f"http://127.0.0.1:{port}"
        root = self.artifact_root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", self.backend_uri, "--default-artifact-root", root.as_uri(),
               "--artifacts-destination", root.as_uri()]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self.uri

    def _wait_ready(self) -> None:
        import urllib.request

        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:  # noqa: S310 - local URL
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {self.timeout:.0f}s; see {self.log_path}")

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
