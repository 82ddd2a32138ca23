"""Registered snapshots and the champion ensemble as MLflow models: pyfunc in a fresh process, `salt-exp predict`
from models:/ and runs:/ URIs, `mlflow models serve` over HTTP, one-line errors. Real MLflow, tiny models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from salt_exp.cli import main
from salt_exp.data.rle import rle_decode
from salt_exp.train.run import run_fold
from tests.reliability import reliability
from tests.test_ensemble import FAST
from tests.test_train_run import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
RULES = "blank,vertical,sandwich,cap"  # every rule on, so the test tiles' mosaic context is exercised
CHAMPION = "models:/salt-srv-ensemble@champion"


@dataclass(frozen=True)
class Champion:
    root: Path
    uri: str
    data: Path
    submission: Path
    ensemble_run: str


def _env(champ: Champion) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": champ.uri, "SALT_EXP_WORK": str(champ.root / "work")}


@pytest.fixture(scope="module")
def champion(synth_dir, tmp_path_factory):
    """Two tiny folds trained and their ensemble registered (every rule applied), in a store of this module."""
    root = tmp_path_factory.mktemp("serving")
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as mp:
        (root / "mlruns").mkdir()
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        for key, value in {"MLFLOW_TRACKING_URI": uri, "SALT_EXP_WORK": str(root / "work"),
                           "SALT_EXP_CACHE": str(base / "cache"), "SALT_EXP_FOLDS": str(base / "folds")}.items():
            mp.setenv(key, value)
        mp.chdir(root)
        for fold in (0, 1):
            assert run_fold(tiny_cfg(synth_dir, *FAST), fold, study="srv").result.status == "FINISHED"
        out = root / "submissions" / "srv.csv"
        assert main(["ensemble", "--study", "srv", "--top-cycles", "2", "--selection", "top", "--postprocess", RULES, "--out", str(out)]) == 0
        c = MlflowClient(uri)
        run = c.get_model_version_by_alias("salt-srv-ensemble", "champion").run_id
        yield Champion(root, uri, synth_dir, out, run)


def _submission_masks(path: Path) -> tuple[list[str], np.ndarray]:
    sub = pd.read_csv(path, keep_default_na=False)
    return sub["id"].tolist(), np.stack([rle_decode(r, (101, 101)) for r in sub["rle_mask"]])


def test_champion_version_is_a_logged_pyfunc_model_with_its_members(champion):
    c = MlflowClient(champion.uri)
    v = c.get_model_version_by_alias("salt-srv-ensemble", "champion")
    assert v.source.startswith("models:/m-")
    lm = c.get_logged_model(v.source.removeprefix("models:/"))
    assert lm.source_run_id == champion.ensemble_run and lm.status.name == "READY" and lm.model_type == "salt-ensemble"
    members = json.loads(v.tags["members"])
    assert lm.params["members"] == ",".join(members) and len(members) == 4
    assert all(lm.params[f"member_{i}"].startswith(members[i]) for i in range(4))  # the model page lists them
    assert {"oof_map", "fold0_threshold"} <= {m.key for m in lm.metrics}
    rules = lm.params["rules"]
    assert rules == RULES
    import mlflow

    info = mlflow.models.get_model_info(CHAMPION)
    spec = info.signature.inputs.to_dict()[0]["tensor-spec"]
    assert spec["dtype"] == "float32" and list(spec["shape"]) == [-1, 101, 101]
    assert {p.name for p in info.signature.params.params} >= {"ids", "probs", "depths", "mosaic_id"}
    # each member snapshot is a logged model too, with its metrics and its source run
    for key in members:
        name, version = key.split("/v")
        sv = c.get_model_version(name, version)
        slm = c.get_logged_model(sv.source.removeprefix("models:/"))
        assert slm.source_run_id == sv.run_id and "snapshot_val_map" in {m.key for m in slm.metrics}


def test_champion_loads_in_a_fresh_process_and_predicts_the_submission(champion, tmp_path):
    """mlflow.pyfunc.load_model("models:/...@champion") in a new interpreter: masks equal the submission's."""
    ids, masks = _submission_masks(champion.submission)
    np.save(tmp_path / "expected.npy", masks)
    script = f"""
import numpy as np, mlflow
from salt_exp.data.kaggle import load_kaggle
test = load_kaggle({str(champion.data)!r}).test
model = mlflow.pyfunc.load_model({CHAMPION!r})
masks = model.predict(test.images.astype("float32"), params={{"ids": test.ids.tolist()}})
assert test.ids.tolist() == {ids!r}
expected = np.load({str(tmp_path / "expected.npy")!r})
print("equal", masks.dtype, masks.shape, bool((masks == expected).all()), int((masks != expected).sum()))
probs = model.predict(test.images.astype("float32"), params={{"ids": test.ids.tolist(), "probs": True}})
print("probs", probs.dtype, float(probs.min()) >= 0.0, float(probs.max()) <= 1.0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(champion),
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"equal uint8 ({len(ids)}, 101, 101) True 0" in done.stdout, done.stdout
    assert "probs float32 True True" in done.stdout


def test_predict_reproduces_the_submission_byte_for_byte_from_every_uri_form(champion, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion.uri)
    version = MlflowClient(champion.uri).get_model_version_by_alias("salt-srv-ensemble", "champion").version
    expected = champion.submission.read_bytes()
    for uri in (CHAMPION, f"models:/salt-srv-ensemble/{version}", f"runs:/{champion.ensemble_run}/ensemble"):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.csv"
        assert main(["predict", uri, "--data", str(champion.data), "--out", str(out)]) == 0, capsys.readouterr().err
        assert out.read_bytes() == expected, uri
    assert "submission" in capsys.readouterr().out
    # a folder of PNG tiles: masks in the train/masks format, equal to the submission's
    images = tmp_path / "tiles"
    shutil.copytree(champion.data / "test" / "images", images)
    assert main(["predict", CHAMPION, "--images", str(images), "--out", str(tmp_path / "masks")]) == 0
    from salt_exp.data.pngio import read_mask

    ids, masks = _submission_masks(champion.submission)
    for tile_id, mask in zip(ids, masks, strict=True):
        np.testing.assert_array_equal(read_mask(tmp_path / "masks" / f"{tile_id}.png"), mask, err_msg=tile_id)
    # probabilities, and one snapshot version on its own
    assert main(["predict", CHAMPION, "--data", str(champion.data), "--out", str(tmp_path / "p.npz"), "--probs"]) == 0
    with np.load(tmp_path / "p.npz") as z:
        assert z["ids"].tolist() == ids and z["probs"].dtype == np.float32 and 0 <= z["probs"].min() <= z["probs"].max() <= 1
        probs = z["probs"]
    assert main(["predict", "models:/salt-srv/1", "--images", str(images), "--out", str(tmp_path / "snap.npz")]) == 0
    with np.load(tmp_path / "snap.npz") as z:
        assert set(np.unique(z["masks"])) <= {0, 1} and len(z["masks"]) == len(ids)
    assert not np.allclose(probs, 0) and not np.allclose(probs, 1)


PREDICT_CASES = {"small_tile": "tile of the wrong size", "empty": "folder without tiles",
                 "alias": "unknown model alias", "model": "unknown registered model",
                 "probs_csv": "--probs with a .csv output", "both": "both --images and --data"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c, marks=reliability(
    "bad-input", "ensemble/predict input", f"salt-exp predict: {what}", "exit 1; one line naming the input and "
    "what was expected; no output file")) for c, what in PREDICT_CASES.items()])
def test_predict_refuses_bad_input_in_one_line(champion, tmp_path, monkeypatch, capsys, case):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion.uri)
    folder = tmp_path / "in"
    folder.mkdir()
    uri, extra, expect = CHAMPION, ["--images", str(folder), "--out", str(tmp_path / "o.csv")], ""
    if case == "small_tile":
        from salt_exp.data.pngio import write_image

        write_image(folder / "small.png", np.zeros((64, 64), np.uint8))
        expect = "small.png: expected a 101x101 tile, got 64x64"
    elif case == "empty":
        expect = "no .png tiles"
    elif case == "alias":
        uri, expect = "models:/salt-srv-ensemble@nope", "models:/salt-srv-ensemble@nope"
    elif case == "model":
        uri, expect = "models:/salt-nothing@champion", "no registered model 'salt-nothing'"
    elif case == "probs_csv":
        shutil.copy(next((champion.data / "test" / "images").glob("*.png")), folder)
        extra, expect = [*extra, "--probs"], "a submission holds masks"
    else:
        extra, expect = [*extra, "--data", str(champion.data)], "exactly one of --images"
    assert main(["predict", uri, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expect in err and "\n" not in err, err
    assert not (tmp_path / "o.csv").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_served_champion_answers_http_with_the_submission_masks(champion, tmp_path):
    """`salt-exp serve` (mlflow models serve on the store) on 127.0.0.1: POSTed tiles come back as the masks."""
    from salt_exp.data.kaggle import load_kaggle

    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "salt_exp", "serve", "--study", "srv", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=_env(champion), cwd=champion.root,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        test = load_kaggle(champion.data).test
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"inputs": test.images.tolist(), "params": {"ids": test.ids.tolist()}})
        assert status == 200, body
        ids, expected = _submission_masks(champion.submission)
        got = np.asarray(body["predictions"], dtype=np.uint8)
        assert test.ids.tolist() == ids and got.shape == expected.shape and (got == expected).all()
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": [[[0.0] * 64] * 64]})
        assert status == 400 and "101" in json.dumps(body), body
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it already ended (the assertion above says why)
        log.close()


def test_serve_without_a_model_or_study_is_a_usage_line(capsys, mlflow_store):
    assert main(["serve"]) == 1
    assert "give a MODEL_URI or --study" in capsys.readouterr().err
    assert main(["serve", "--study", "nothing", "--print-command"]) == 1
    assert "no registered model 'salt-nothing-ensemble'" in capsys.readouterr().err


@pytest.mark.slow
def test_model_pages_show_a_snapshots_metrics_and_source_run_and_the_ensembles_members(champion, tmp_path):
    """The MLflow UI as a user opens it (`salt-exp ui`, headless Chromium): a snapshot's logged-model page lists
    its metrics and its source run, the ensemble's page its members."""
    from tests.browser import chromium, dump_dom
    from tests.test_ui import _serve

    chromium()
    c = MlflowClient(champion.uri)
    ens = c.get_model_version_by_alias("salt-srv-ensemble", "champion")
    snap = c.get_model_version("salt-srv", json.loads(ens.tags["members"])[0].split("/v")[1])
    exp = c.get_run(champion.ensemble_run).info.experiment_id
    source_run = c.get_run(snap.run_id).info.run_name
    port = _free_port()
    env = _env(champion)
    with open(tmp_path / "ui.log", "w") as log, pytest.MonkeyPatch.context() as mp:
        for k in ("MLFLOW_TRACKING_URI", "SALT_EXP_WORK"):
            mp.setenv(k, env[k])
        proc, url = _serve(port, "srv", log)
        try:
            base = url.split("#")[0]
            snap_page = dump_dom(f"{base}#/experiments/{exp}/models/{snap.source.removeprefix('models:/')}?workflowType=machine_learning",
                                 tmp_path, budget_ms=20000)
            ens_page = dump_dom(f"{base}#/experiments/{exp}/models/{ens.source.removeprefix('models:/')}?workflowType=machine_learning",
                                tmp_path, budget_ms=20000)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    assert "snapshot_val_map" in snap_page and "val_map_bin_" in snap_page, snap_page[-3000:]
    assert source_run in snap_page, source_run
    assert "member_0" in ens_page and json.loads(ens.tags["members"])[0] in ens_page, ens_page[-3000:]


class _NotATensor:
    """Pickled inside a checkpoint: weights_only=True refuses to rebuild it."""


def test_a_tampered_checkpoint_inside_a_logged_model_is_refused_in_one_line(mlflow_store, kaggle_dir, tmp_path, capsys):
    import torch

    from salt_exp.serving.pyfunc import WEIGHTS_ARTIFACT, signature
    from salt_exp.tracking import RunTracker
    from salt_exp.tracking.models import code_file, log_pyfunc_model

    tracker = RunTracker.start("salt/tamper", "fold0", {"salt.role": "fold"})
    bad = tmp_path / "cycle0_epoch0.pt"
    torch.save({"state_dict": {}, "config": {}, "extra": _NotATensor()}, bad)
    model_id = log_pyfunc_model(tracker.run_id, name="fold0-cycle0", key="cycle_0", code=code_file("snapshot_model"),
                                artifacts={WEIGHTS_ARTIFACT: bad}, signature=signature("snapshot"),
                                model_type="salt-snapshot")
    tracker.end("FINISHED")
    # logged once per key: a second call (a resumed run) returns the same READY model
    assert log_pyfunc_model(tracker.run_id, name="fold0-cycle0", key="cycle_0", code=code_file("snapshot_model"),
                            artifacts={WEIGHTS_ARTIFACT: bad}, signature=signature("snapshot"),
                            model_type="salt-snapshot") == model_id
    out = tmp_path / "o.npz"
    assert main(["predict", f"models:/{model_id}", "--images", str(kaggle_dir / "test" / "images"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "is not a plain state_dict checkpoint" in err and "\n" not in err, err
    assert not out.exists()
