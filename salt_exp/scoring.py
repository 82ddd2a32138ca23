"""Scoring a Kaggle submission against a solution file, as the leaderboard would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from salt_exp.data.rle import rle_decode
from salt_exp.data.tables import duplicated_ids, read_table
from salt_exp.errors import SaltError
from salt_exp.metrics import bin_breakdown, coverage_bins, image_scores


def _decode_all(df: pd.DataFrame, path: Path, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros((len(df), *shape), dtype=np.uint8)
    for i, (tid, rle) in enumerate(zip(df["id"], df["rle_mask"], strict=True)):
        out[i] = rle_decode(rle, shape, where=f"{path} id={tid} rle_mask")
    return out


def _unique_ids(df: pd.DataFrame, path: Path) -> None:
    dup = duplicated_ids(df)
    if dup:
        raise SaltError(f"{path}: duplicate id {dup[0]} ({len(dup)} duplicated ids)")


def read_masks(path: str | Path, kind: str = "submission") -> tuple[np.ndarray, np.ndarray]:
    """(ids, masks uint8 (N, 101, 101)) of an id,rle_mask CSV; duplicate ids or bad RLE raise SaltError."""
    path = Path(path)
    df = read_table(path, kind)
    _unique_ids(df, path)
    return df["id"].to_numpy(dtype=str), _decode_all(df, path, (101, 101))


def _match_ids(sub: pd.DataFrame, sol: pd.DataFrame, sub_path: Path, sol_path: Path) -> pd.DataFrame:
    for df, path in ((sub, sub_path), (sol, sol_path)):
        _unique_ids(df, path)
    missing = sorted(set(sol["id"]) - set(sub["id"]))
    if missing:
        raise SaltError(f"{sub_path}: missing id {missing[0]} ({len(missing)} solution ids have no row)")
    extra = sorted(set(sub["id"]) - set(sol["id"]))
    if extra:
        raise SaltError(f"{sub_path}: unexpected id {extra[0]} ({len(extra)} ids are not in {sol_path.name})")
    return sub.set_index("id").loc[sol["id"]].reset_index()


def score_frames(sub: pd.DataFrame, sol: pd.DataFrame, sub_path: Path, sol_path: Path, *,
                 shape: tuple[int, int] = (101, 101)) -> dict:
    """Score aligned submission/solution tables; see ``score_files`` for the result."""
    sub = _match_ids(sub, sol, sub_path, sol_path)
    pred = _decode_all(sub, sub_path, shape)
    truth = _decode_all(sol, sol_path, shape)
    scores = image_scores(pred, truth)
    result: dict = {
        "score": float(scores.mean()),
        "n": len(scores),
        "bins": bin_breakdown(scores, coverage_bins(truth)),
    }
    if "Usage" in sol.columns:
        usage = sol["Usage"].str.lower().to_numpy()
        for split in ("public", "private"):
            sel = usage == split
            result[split] = float(scores[sel].mean()) if sel.any() else None
            result[f"n_{split}"] = int(sel.sum())
    return result


def score_files(submission: str | Path, solution: str | Path) -> dict:
    """Score a submission CSV (id,rle_mask) against a solution CSV (id,rle_mask[,Usage]).

    Returns ``{"score", "n", "bins": [...], and with a Usage column "public", "private",
    "n_public", "n_private"}``. Missing, extra or duplicate ids and malformed RLE raise
    SaltError naming the file and id.
    """
    sub_path, sol_path = Path(submission), Path(solution)
    return score_frames(read_table(sub_path, "submission"), read_table(sol_path, "solution"), sub_path, sol_path)
