"""``salt-exp data check``: what a dataset holds and what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salt_exp.data.folds import fold_balance, folds_path, load_or_create_folds, make_folds
from salt_exp.data.kaggle import KaggleData, scan_kaggle
from salt_exp.metrics import BIN_NAMES, coverage_bins


def _mosaic_summary(data: KaggleData) -> dict:
    if data.mosaics is None:
        return {"present": False}
    placed = set(data.mosaics["id"])
    test_ids = [] if data.test is None else data.test.ids.tolist()
    return {
        "present": True,
        "n_mosaics": int(data.mosaics["mosaic_id"].nunique()),
        "train_covered": float(np.mean([i in placed for i in data.train.ids.tolist()])),
        "test_covered": float(np.mean([i in placed for i in test_ids])) if test_ids else None,
        "shared_positions": int(data.mosaics.duplicated(["mosaic_id", "x", "y"]).sum()),
    }


def _fold_summary(data: KaggleData, scheme: str, k: int, seed: int) -> dict:
    """Balance of the persisted folds when they exist, else of the folds that would be created."""
    persisted = folds_path(data, scheme, k, seed).exists()
    folds = load_or_create_folds(data, scheme, k, seed)["fold"].to_numpy() if persisted else make_folds(data, scheme, k, seed)
    return {"scheme": scheme, "k": k, "seed": seed, "persisted": persisted, "balance": fold_balance(data, folds)}


def check_dataset(root: str | Path, scheme: str = "random", k: int = 5, seed: int = 42) -> dict:
    """A JSON-ready report: counts, empty fraction, coverage bins, blank tiles, depths, mosaics, folds, problems."""
    data, problems = scan_kaggle(root)
    train = data.train
    bins = coverage_bins(train.masks)
    salt = train.masks.reshape(len(train), -1).sum(axis=1)
    blank = train.blank
    depths = np.concatenate([train.depths] + ([data.test.depths] if data.test is not None else []))
    report = {
        "root": str(root),
        "train": len(train),
        "test": 0 if data.test is None else len(data.test),
        "empty": int((salt == 0).sum()),
        "empty_fraction": float((salt == 0).mean()),
        "full_coverage": int((salt == train.masks[0].size).sum()),
        "coverage_bins": {name: int((bins == b).sum()) for b, name in enumerate(BIN_NAMES)},
        "blank_train": int(blank.sum()),
        "blank_train_with_salt": int((blank & (salt > 0)).sum()),
        "blank_test": 0 if data.test is None else int(data.test.blank.sum()),
        "depth": {"min": float(np.nanmin(depths)), "max": float(np.nanmax(depths)), "mean": float(np.nanmean(depths))},
        "mosaics": _mosaic_summary(data),
        "problems": problems,
    }
    if not problems:
        report["folds"] = _fold_summary(data, scheme, k, seed)
    return report


def format_report(r: dict) -> str:
    """The report as aligned text for a terminal."""
    lines = [
        f"dataset        {r['root']}",
        f"tiles          train {r['train']}, test {r['test']}",
        f"empty masks    {r['empty']} ({r['empty_fraction']:.1%}); 100%-coverage masks: {r['full_coverage']}",
        "coverage bins  " + ", ".join(f"{k}: {v}" for k, v in r["coverage_bins"].items()),
        f"blank tiles    train {r['blank_train']} ({r['blank_train_with_salt']} with salt), test {r['blank_test']}",
        f"depth          {r['depth']['min']:.0f} .. {r['depth']['max']:.0f} (mean {r['depth']['mean']:.0f})",
    ]
    m = r["mosaics"]
    if m["present"]:
        test = "n/a" if m["test_covered"] is None else f"{m['test_covered']:.1%}"
        lines.append(f"mosaics        {m['n_mosaics']} mosaics; train tiles placed {m['train_covered']:.1%}, "
                     f"test {test}; shared positions {m['shared_positions']}")
    else:
        lines.append("mosaics        none (no mosaics.csv)")
    if "folds" in r:
        f = r["folds"]
        lines.append(f"folds          {f['scheme']} k={f['k']} seed={f['seed']} ({'persisted' if f['persisted'] else 'not yet created'})")
        lines += [f"  fold {b['fold']}: {b['size']} tiles, empty {b['empty_share']:.1%}, "
                  f"coverage {b['mean_coverage']:.1%}, depth {b['mean_depth']:.0f}" for b in f["balance"]]
    lines.append(f"problems       {len(r['problems'])}")
    lines += [f"  {p}" for p in r["problems"][:50]]
    if len(r["problems"]) > 50:
        lines.append(f"  ... and {len(r['problems']) - 50} more (see --json)")
    return "\n".join(lines)
