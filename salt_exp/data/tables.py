"""CSV tables of the Kaggle layout, read with their headers checked."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from salt_exp.errors import SaltError

# Required columns of each CSV of the layout (extra columns are allowed only where listed).
SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train.csv": (("id", "rle_mask"), ()),
    "depths.csv": (("id", "z"), ()),
    "mosaics.csv": (("id", "x", "y", "mosaic_id"), ()),
    "sample_submission.csv": (("id", "rle_mask"), ()),
    "submission": (("id", "rle_mask"), ()),
    "solution": (("id", "rle_mask"), ("Usage",)),
    "folds": (("id", "fold"), ()),
}


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read a CSV of the given kind as strings; raise SaltError on a missing file or bad header.

    Empty cells stay empty strings (an empty ``rle_mask`` is an empty mask).
    """
    path = Path(path)
    required, optional = SCHEMAS[kind]
    if path.is_dir():
        raise SaltError(f"{path}: is a folder (expected a CSV file with columns {','.join(required)})")
    if not path.is_file():
        raise SaltError(f"{path}: file not found (expected a CSV with columns {','.join(required)})")
    try:  # utf-8-sig: a UTF-8 byte-order mark (spreadsheet exports) is read as if absent; CRLF rows read as LF
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise SaltError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    header = [h.strip() for h in header]
    allowed = set(required) | set(optional)
    if [h for h in header if h in required] != list(required) or set(header) - allowed:
        raise SaltError(
            f"{path}: malformed CSV header {','.join(header) or '(empty)'}; expected {','.join(required)}"
            + (f" (optionally {','.join(optional)})" if optional else "")
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise SaltError(f"{path}: malformed CSV ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    df.columns = [c.strip() for c in df.columns]
    for col in df.columns:
        df[col] = df[col].str.strip()
    return df


def duplicated_ids(df: pd.DataFrame) -> list[str]:
    """Ids that appear more than once, in file order."""
    dup = df["id"][df["id"].duplicated()]
    return list(dict.fromkeys(dup.tolist()))


def numeric_column(df: pd.DataFrame, col: str, path: str | Path, *, integer: bool = False) -> np.ndarray:
    """A finite number per row; SaltError naming the file, column and first bad row otherwise."""
    values = pd.to_numeric(df[col], errors="coerce")
    numbers = values.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers) | ((numbers != np.round(numbers)) if integer else False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise SaltError(
            f"{path}: column {col} must be {'an integer' if integer else 'a finite number'}, "
            f"got {df[col].iloc[row]!r} for id={df['id'].iloc[row]}"
        )
    return values.to_numpy(dtype=np.int64 if integer else np.float32)
