"""`make ui` as a user meets it: the MLflow UI opens on the study's training runs, not the GenAI overview,
and a fold run's page lists its dataset (headless Chromium against a real `mlflow ui`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from salt_exp.contract import DatasetRecord, Tag
from salt_exp.study.server import free_port
from salt_exp.tracking import RunTracker
from tests.browser import chromium, dump_dom, screenshot


def _serve(port: int, study: str, log) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "salt_exp", "ui", "--study", study, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    url = proc.stdout.readline().split()[2]  # "MLflow UI: <url>  (...)"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise AssertionError("mlflow ui did not answer within 120 s")


@pytest.mark.slow
def test_make_ui_opens_the_runs_table_and_a_run_lists_its_dataset(mlflow_store, tmp_path):
    chromium()  # skips without the browser (CI installs it)
    tracker = RunTracker.start("salt/uit", "fold0", {Tag.ROLE: "fold", Tag.STUDY: "uit", Tag.FOLD: "0"})
    for step, value in enumerate((0.41, 0.52, 0.55)):
        tracker.log_metrics({"val_map": value, "train_loss": 1.0 - value}, step)
    tracker.log_datasets([DatasetRecord(name="synthetic-fold0-train", digest="0123456789ab", source=str(tmp_path),
                                        context="train", profile={"tiles": 57}),
                          DatasetRecord(name="synthetic-fold0-validation", digest="ba9876543210", source=str(tmp_path),
                                        context="validation", profile={"tiles": 15})])
    tracker.end("FINISHED")
    port = free_port()
    with open(tmp_path / "ui.log", "w") as log:
        proc, url = _serve(port, "uit", log)
        try:
            landing = dump_dom(url, tmp_path, budget_ms=15000)
            run_page = dump_dom(url.replace("?", f"/runs/{tracker.run_id}?"), tmp_path, budget_ms=15000)
            screenshot(url, tmp_path / "landing.png", tmp_path, size=(1400, 900), budget_ms=15000)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    assert "workflowType=machine_learning" in url and "/#/experiments/" in url
    assert "fold0" in landing, landing[-3000:]  # the runs table lists the run
    assert "Detect issues in your traces" not in landing and "Token usage" not in landing  # not the GenAI overview
    assert "synthetic-fold0-train" in run_page, run_page[-3000:]
