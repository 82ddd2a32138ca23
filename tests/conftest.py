"""Shared fixtures: a tiny Kaggle-layout dataset written in the real file formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from salt_exp.data.pngio import write_image, write_mask
from salt_exp.data.rle import rle_encode
from tests.reliability import (  # noqa: F401 - hooks: the reliability matrices (docs/RELIABILITY.md)
    pytest_collection_modifyitems,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)

REAL_TGS = Path(__file__).resolve().parents[1].parent / "shared" / "tgs"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_stores(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep caches and fold files out of the user's home and the repo."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("SALT_EXP_CACHE", str(base / "cache"))
    monkeypatch.setenv("SALT_EXP_FOLDS", str(base / "folds"))


def make_tiles(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """n random tiles: ids, images (n,101,101) uint8, masks (n,101,101) 0/1 with a third empty."""
    rng = np.random.default_rng(seed)
    ids = [f"{rng.integers(16**10):010x}" for _ in range(n)]
    images = rng.integers(0, 256, size=(n, 101, 101), dtype=np.uint8)
    masks = np.zeros((n, 101, 101), np.uint8)
    for i in range(n):
        if i % 3:
            top = int(rng.integers(5, 95))
            masks[i, top:, : int(rng.integers(10, 101))] = 1
    images[0] = 117  # a blank tile (its mask is empty, as in the real data)
    return ids, images, masks


def write_kaggle(root: Path, n: int = 12, n_test: int = 4, seed: int = 0, *, mosaics: bool = True) -> Path:
    """Write a small dataset in the exact Kaggle layout and formats; returns root."""
    ids, images, masks = make_tiles(n + n_test, seed)
    train_ids, test_ids = ids[:n], ids[n:]
    for sub in ("train/images", "train/masks", "test/images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, tid in enumerate(train_ids):
        write_image(root / "train/images" / f"{tid}.png", images[i])
        write_mask(root / "train/masks" / f"{tid}.png", masks[i])
    for j, tid in enumerate(test_ids):
        write_image(root / "test/images" / f"{tid}.png", images[n + j])
    pd.DataFrame({"id": train_ids, "rle_mask": [rle_encode(m) for m in masks[:n]]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": ids, "z": np.arange(len(ids)) * 10 + 50}).to_csv(root / "depths.csv", index=False)
    pd.DataFrame({"id": test_ids, "rle_mask": ["1 1"] * n_test}).to_csv(root / "sample_submission.csv", index=False)
    if mosaics:
        pd.DataFrame({"id": ids, "x": [i % 4 for i in range(len(ids))], "y": [i // 4 % 2 for i in range(len(ids))],
                      "mosaic_id": [i // 8 for i in range(len(ids))]}).to_csv(root / "mosaics.csv", index=False)
    return root


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    return write_kaggle(tmp_path / "tgs")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module: on a shared 2-core machine, 2 OpenMP threads stall for
    seconds per op. Opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY_SYNTH = {"sections": 3, "tile_rows": 4, "tile_cols": 6, "seed": 7}


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (Kaggle layout), built once per test session."""
    from salt_exp.synth import SynthConfig, generate_dataset

    out = tmp_path_factory.mktemp("synth") / "synthetic"
    generate_dataset(out, SynthConfig(**TINY_SYNTH))
    return out


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database (MLflow's migrations take seconds per fresh store on a small CPU)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:  # MLflow makes ./mlruns for its Default experiment: not in the repo
        mp.chdir(db.parent)
        MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(scope="session")
def baseline(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory, template: Path):
    """The fault matrix's uninterrupted commands (tests.test_faults), once per session, in their own fresh store:
    the cv run's store and then the ensemble's, as fingerprints, and the submission."""
    from tests.test_faults import Baseline, Store, check_once, fingerprint, ok

    store = Store(tmp_path_factory.mktemp("baseline"), synth_dir, tmp_path_factory.getbasetemp(), template)
    ok(store.cv())
    cv = fingerprint(store)
    check_once(cv)
    ok(store.ensemble())
    ens = fingerprint(store)
    check_once(ens)
    return Baseline(cv, ens, store.submission.read_bytes())


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite-backed MLflow store (real MLflow, no mocks) with its artifacts under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SALT_EXP_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # short runs still get system/* samples
    monkeypatch.chdir(tmp_path)
    return uri
