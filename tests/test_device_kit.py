"""The GPU device kit (issue 20) as far as a CPU can test it: the data packs and unpacks exactly, the protocol's
dry run lists its steps within the device allowance, the throughput script runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_kit  # noqa: E402


def test_packed_tiles_unpack_to_the_same_dataset(synth_dir, tmp_path):
    from salt_exp.data.kaggle import load_kaggle

    npz = device_kit.pack_data(synth_dir, tmp_path / "tgs.npz")
    root = device_kit.unpack_data(npz, tmp_path / "tgs")
    a, b = load_kaggle(synth_dir, cache=False).train, load_kaggle(root, cache=False).train
    assert a.ids.tolist() == b.ids.tolist()
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.depths, b.depths)
    assert npz.stat().st_size < a.images.nbytes  # packed small


def test_wheel_names_and_the_device_list():
    assert device_kit.project_of("mlflow_skinny-3.17.2-py3-none-any.whl") == "mlflow-skinny"
    assert device_kit.project_of("SQLAlchemy-2.0.40-cp312-cp312-manylinux_2_17_x86_64.whl") == "sqlalchemy"
    assert {"torch", "numpy", "timm", "nvidia-ml-py"} <= device_kit.DEVICE_HAS
    assert not {"mlflow-skinny", "optuna", "albumentations", "sqlalchemy", "alembic"} & device_kit.DEVICE_HAS


def test_protocol_dry_run_lists_its_steps_within_the_allowance():
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_protocol.sh"), "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    steps = [line.split()[0] for line in lines[:-1]]
    assert steps == ["install", "data", "smoke", "throughput", "quality", "pack"]
    budgets = [int(line.split()[1].rstrip("s")) for line in lines[:-1]]
    assert sum(budgets) <= 9 * 60 and lines[-1].startswith("total") and f"{sum(budgets)}s" in lines[-1]
    assert "schedule.budget_minutes=3" in out.stdout and "--no-index" in out.stdout


def test_throughput_script_runs_on_cpu(synth_dir, tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--data", str(synth_dir),
                           "--out", str(out), "--smoke", "--workers", "0"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["encoder"] == "timm/resnet10t" and row["device"] == "cpu"
    assert all(row[k] > 0 for k in ("model_img_s", "loader_img_s", "train_img_s"))
    assert row["gpu_util_mean"] is None or row["gpu_util_mean"] >= 0

