import json
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from salt_exp.cli import main
from salt_exp.data.rle import rle_decode, rle_encode
from tests.reliability import reliability


def naive_file_score(sub: pd.DataFrame, sol: pd.DataFrame) -> float:
    """Independent reference: per-row Python loop with exact rational IoU."""
    preds = dict(zip(sub["id"], sub["rle_mask"], strict=True))
    total = []
    for tid, rle in zip(sol["id"], sol["rle_mask"], strict=True):
        t, p = rle_decode(rle).astype(bool), rle_decode(preds[tid]).astype(bool)
        if not t.any():
            total.append(float(not p.any()))
        elif not p.any():
            total.append(0.0)
        else:
            iou = Fraction(int((t & p).sum()), int((t | p).sum()))
            total.append(sum(iou > Fraction(k, 20) for k in range(10, 20)) / 10)
    return float(np.mean(total))


def make_pair(tmp_path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"{i:010x}" for i in range(n)]
    sol_rle, sub_rle = [], []
    for i in range(n):
        truth = np.zeros((101, 101), np.uint8)
        if i % 3:
            truth[int(rng.integers(0, 90)):, : int(rng.integers(20, 101))] = 1
        pred = truth.copy()
        if i % 5 == 1:
            pred[:] = 0
        elif i % 5 == 2:
            pred = np.roll(pred, int(rng.integers(1, 15)), axis=1)
        elif i % 5 == 3:
            # IoU exactly 3/4, a threshold that must not count: 1515 / 2020 pixels
            truth[:] = 0
            truth[:, :20] = 1
            pred = np.zeros_like(truth)
            pred[:, :15] = 1
        elif i % 5 == 4:
            pred[:5, :5] = 1
        sol_rle.append(rle_encode(truth))
        sub_rle.append(rle_encode(pred))
    sol = pd.DataFrame({"id": ids, "rle_mask": sol_rle, "Usage": ["Public" if i % 3 == 0 else "Private" for i in range(n)]})
    sub = pd.DataFrame({"id": ids[::-1], "rle_mask": sub_rle[::-1]})  # order must not matter
    sol.to_csv(tmp_path / "solution.csv", index=False)
    sub.to_csv(tmp_path / "submission.csv", index=False)
    return sub, sol


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_cli_matches_independent_implementation(tmp_path, capsys, seed):
    sub, sol = make_pair(tmp_path, seed=seed)
    assert main(["score", str(tmp_path / "submission.csv"), str(tmp_path / "solution.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    sub, sol = sub.fillna(""), sol.fillna("")
    assert abs(result["score"] - naive_file_score(sub, sol)) < 1e-9
    public = sol[sol["Usage"] == "Public"]
    private = sol[sol["Usage"] == "Private"]
    assert abs(result["public"] - naive_file_score(sub, public)) < 1e-9
    assert abs(result["private"] - naive_file_score(sub, private)) < 1e-9
    assert result["n_public"] + result["n_private"] == result["n"] == len(sol)
    assert sum(b["count"] for b in result["bins"]) == len(sol)


def test_score_text_output(tmp_path, capsys):
    make_pair(tmp_path)
    assert main(["score", str(tmp_path / "submission.csv"), str(tmp_path / "solution.csv")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("score") and "public" in out and "private" in out and "err share" in out


def _error(tmp_path, capsys, mutate, *, fragments):
    sub, _ = make_pair(tmp_path)
    mutate(sub).to_csv(tmp_path / "submission.csv", index=False)
    assert main(["score", str(tmp_path / "submission.csv"), str(tmp_path / "solution.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    for frag in fragments:
        assert frag in err, err


@reliability("bad-input", "submission (score)", "missing id", "exit 1; one line naming the submission and the first missing id")
def test_missing_id(tmp_path, capsys):
    _error(tmp_path, capsys, lambda s: s.iloc[1:], fragments=("submission.csv", "missing id"))


@reliability("bad-input", "submission (score)", "extra id", "exit 1; one line naming the id that is not in the solution")
def test_extra_id(tmp_path, capsys):
    _error(tmp_path, capsys, lambda s: pd.concat([s, pd.DataFrame({"id": ["zzz"], "rle_mask": [""]})]),
           fragments=("unexpected id zzz",))


@reliability("bad-input", "submission (score)", "duplicate id", "exit 1; one line naming the duplicated id")
def test_duplicate_id(tmp_path, capsys):
    _error(tmp_path, capsys, lambda s: pd.concat([s, s.iloc[[0]]]), fragments=("duplicate id",))


@reliability("bad-input", "submission (score)", "malformed RLE: '3 x'", "exit 1; one line naming the submission and 'malformed RLE'")
def test_malformed_rle(tmp_path, capsys):
    def bad(s):
        s = s.copy()
        s.loc[s.index[0], "rle_mask"] = "3 x"
        return s
    _error(tmp_path, capsys, bad, fragments=("submission.csv", "malformed RLE"))


@reliability("bad-input", "submission (score)", "header wrong (EncodedPixels)", "exit 1; one line 'malformed CSV header'")
def test_bad_header(tmp_path, capsys):
    _error(tmp_path, capsys, lambda s: s.rename(columns={"rle_mask": "EncodedPixels"}), fragments=("malformed CSV header",))
