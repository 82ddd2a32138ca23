"""The bad-input matrix (issue 23, docs/RELIABILITY.md): wrong config and study files, datasets, command lines and
submissions fed to the real ``salt-exp`` command in-process. Each is refused with exit 1 (a salt-exp error: exactly one
line ``error: ...`` naming the file or field and what was expected) or 2 (argparse: its last line names the argument),
and leaves nothing behind: no folds file, no dataset cache, no MLflow store, run or work folder, no journal, no output.
Quirks a careful user still expects to work (a UTF-8 byte-order mark, CRLF line ends) are read as if clean.

Generated families (hypothesis) count their inputs with ``tried()``; other cases of the matrix are marked where they
already were tested: tests/test_config.py, test_study_spec.py, test_study.py, test_scoring.py, test_serving.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from salt_exp.cli import main
from salt_exp.config import ExperimentConfig
from salt_exp.data.kaggle import load_kaggle
from salt_exp.data.rle import rle_encode
from salt_exp.stores import dataset_cache, folds_root
from tests.conftest import write_kaggle
from tests.reliability import reliability, tried

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
BAD = "bad-input"
GEN = settings(max_examples=25, deadline=None, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---------------------------------------------------------------- helpers


def cli(capfd: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run ``salt-exp argv`` in-process: (exit status, stdout, stderr); fd-level, so C libraries' lines count too."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    out, err = capfd.readouterr()
    return rc, out, err


def one_error(err: str, *fragments: str) -> str:
    """The single ``error: ...`` line of ``err``, which holds every fragment."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"
    return lines[0]


def usage_error(err: str, *fragments: str) -> str:
    """argparse's usage lines, then ``salt-exp ...: error: ...`` naming the argument."""
    last = err.strip().splitlines()[-1]
    assert ": error: " in last and last.startswith("salt-exp"), err
    for frag in fragments:
        assert frag in last, f"{frag!r} not in {last!r}"
    return last


def tree(*folders: Path) -> set[str]:
    """Every path under ``folders`` (files and folders, links included): what a command may not add."""
    return {str(p) for folder in folders if folder.exists() for p in [folder, *folder.rglob("*")]}


def outputs(tmp: Path) -> set[str]:
    """What a refused command could leave: anything new under tmp, fold files, cached datasets."""
    return tree(tmp, folds_root(), dataset_cache())


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ---------------------------------------------------------------- config files: the schema, walked


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(ExperimentConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(ExperimentConfig)
            if dataclasses.is_dataclass(hints[f.name])}


SECTIONS = _sections()


def _leaves() -> list[tuple[str, Any, dict]]:
    """(dotted key, type, bounds) of every value field of the config, top level and one section deep."""
    out = []
    for cls, prefix in [(ExperimentConfig, ""), *((c, f"{n}.") for n, c in SECTIONS.items())]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(hints[f.name]):
                out.append((prefix + f.name, hints[f.name], dict(f.metadata)))
    return out


LEAVES = _leaves()


def fits(value: Any, tp: Any) -> bool:
    """Whether a parsed YAML value has the type ``tp`` as the config documents it (an independent oracle):
    lists for tuples, non-empty lists and mappings, ints pass as floats, bools are not numbers."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin is tuple:
        if not isinstance(value, list) or not value:
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict) and bool(value) and all(fits(k, args[0]) and fits(v, args[1])
                                                               for k, v in value.items())
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    raise AssertionError(f"no oracle for {tp}")


def _number_kind(tp: Any) -> tuple[str, str] | None:
    """('int'|'float', 'scalar'|'list'|'pair'|'dict') of a numeric field, else None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [k for k in map(_number_kind, args) if k]
        return kinds[0] if kinds else None
    if origin is tuple:
        inner = _number_kind(args[0])
        return (inner[0], "list" if args[-1] is Ellipsis else "pair") if inner else None
    if origin is dict:
        inner = _number_kind(args[1])
        return (inner[0], "dict") if inner else None
    return {int: ("int", "scalar"), float: ("float", "scalar")}.get(tp)


BOUNDED = [(k, tp, b) for k, tp, b in LEAVES if b and _number_kind(tp)]
SYMBOL = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _shape(kind: str, value: Any) -> Any:
    return {"scalar": value, "list": [value], "pair": [value, value], "dict": {"bce": value}}[kind]


def config_text(key: str, value: Any) -> str:
    """A config that extends tiny.yaml and sets the dotted ``key`` (top level or one section deep) to ``value``."""
    section, _, name = key.rpartition(".")
    body = {section: {name: value}} if section else {name: value}
    return f"extends: {TINY}\n" + yaml.safe_dump(body, sort_keys=False)


@pytest.fixture
def store(mlflow_store: str, tmp_path: Path) -> Path:
    """A fresh MLflow store (cwd: tmp_path); a refused command must not create it."""
    return tmp_path


def refused_train(capfd, tmp: Path, config: Path, *fragments: str, extra: tuple[str, ...] = ()) -> str:
    """``salt-exp train CONFIG --fold 0`` is refused in one line naming ``config`` and leaves nothing."""
    before = outputs(tmp)
    rc, out, err = cli(capfd, "train", config, "--fold", "0", *extra)
    assert rc == 1, (rc, out, err)
    line = one_error(err, *fragments)
    assert outputs(tmp) == before, sorted(outputs(tmp) - before)
    return line


# ---------------------------------------------------------------- config file: generated families


@reliability(BAD, "config file", "unknown key (generated: any section, any name)",
             "exit 1; one line naming the file, the dotted key and every valid key of its section; nothing written")
@GEN
@given(section=st.sampled_from(["", *SECTIONS]), key=st.from_regex(r"[a-z][a-z_]{1,11}", fullmatch=True))
def test_unknown_config_key_generated(capfd, store, section, key):
    cls = SECTIONS.get(section, ExperimentConfig)
    valid = [f.name for f in dataclasses.fields(cls)] + ([] if section else ["extends"])
    assume(key not in valid and yaml.safe_load(key) == key)  # 'yes', 'null' ... are not string keys in YAML
    tried()
    dotted = f"{section}.{key}" if section else key
    path = write(store / "bad.yaml", config_text(dotted, 1))
    scope = f"valid keys in '{section}'" if section else "valid keys at top level"
    refused_train(capfd, store, path, str(path), f"unknown key '{dotted}'", f"{scope}: {', '.join(valid)}")


WRONG_VALUES = ["zzz", 1.5, 7, True, None, [1, 2], ["zzz"], {"k": 1}]


@reliability(BAD, "config file", "wrong type (generated: every field x 8 kinds of value)",
             "exit 1; one line naming the file and the dotted key, 'expects <type>' and the value given; "
             "nothing written")
@GEN
@given(leaf=st.sampled_from(LEAVES), value=st.sampled_from(WRONG_VALUES))
def test_wrong_config_type_generated(capfd, store, leaf, value):
    key, tp, _ = leaf
    assume(not fits(value, tp))
    tried()
    path = write(store / "bad.yaml", config_text(key, value))
    refused_train(capfd, store, path, str(path), f"'{key}' expects ", f"got {value!r}")


@st.composite
def out_of_range(draw) -> tuple[str, Any, str]:
    """(dotted key, a value outside one of its bounds, 'op bound')."""
    key, tp, bounds = draw(st.sampled_from(BOUNDED))
    number, shape = _number_kind(tp)
    op, b = draw(st.sampled_from(sorted(bounds.items())))
    if number == "int":
        lo, hi = {"ge": (b - 1000, b - 1), "gt": (b - 1000, b), "le": (b + 1, b + 1000), "lt": (b, b + 1000)}[op]
        x = draw(st.integers(int(lo), int(hi)))
    else:
        below, above = op in ("ge", "gt"), op in ("le", "lt")
        x = draw(st.floats(b - 1e3 if below else b, b if below else b + 1e3, exclude_max=below and op == "ge",
                           exclude_min=above and op == "le", allow_nan=False))
    return key, _shape(shape, x), f"{SYMBOL[op]} {b}"


@reliability(BAD, "config file", "out-of-range value (generated: every bounded field, either side)",
             "exit 1; one line naming the file, the dotted key and its bounds ('must be >= ...'); nothing written")
@GEN
@given(case=out_of_range())
def test_out_of_range_config_value_generated(capfd, store, case):
    key, value, rule = case
    tried()
    path = write(store / "bad.yaml", config_text(key, value))
    refused_train(capfd, store, path, str(path), f"'{key}' must be ", rule)


@reliability(BAD, "config file", "non-finite number (.inf, -.inf, .nan; generated over the bounded float fields)",
             "exit 1; one line naming the file and the dotted key: 'must be a finite number'; nothing written")
@GEN
@given(leaf=st.sampled_from([b for b in BOUNDED if _number_kind(b[1])[0] == "float"]),
       x=st.sampled_from([math.inf, -math.inf, math.nan]))
def test_non_finite_config_number_generated(capfd, store, leaf, x):
    key, tp, _ = leaf
    tried()
    path = write(store / "bad.yaml", config_text(key, _shape(_number_kind(tp)[1], x)))
    refused_train(capfd, store, path, str(path), f"'{key}' must be a finite number")


VALID_LINES = [f"extends: {TINY}", "name: quirky", "optim:", "  lr: 0.01", "  momentum: 0.9", "schedule:",
               "  cycles: 1"]
BREAKERS = ["broken: [1, 2", "\tseed: 1", 'name: "unterminated', "key: value: more", "}", "@reserved: 1",
            "`tick: 1", "optim: {lr: 0.1", "- stray: item", "  : nothing"]


@reliability(BAD, "config file", "YAML syntax error (generated: 10 breakers at every line)",
             "exit 1; one line naming the file and 'invalid YAML at line N' with N within the file; nothing written")
@GEN
@given(breaker=st.sampled_from(BREAKERS), at=st.integers(0, len(VALID_LINES)))
def test_yaml_syntax_error_generated(capfd, store, breaker, at):
    lines = [*VALID_LINES[:at], breaker, *VALID_LINES[at:]]
    text = "\n".join(lines) + "\n"
    try:
        yaml.safe_load(text)
        assume(False)  # this placement happens to be valid YAML
    except yaml.YAMLError:
        pass
    tried()
    path = write(store / "bad.yaml", text)
    line = refused_train(capfd, store, path, str(path), "invalid YAML at line ")
    assert 1 <= int(line.split("invalid YAML at line ")[1].split(":")[0]) <= len(lines) + 1, line


# ---------------------------------------------------------------- config file: fixed cases

CONFIG_FILES = [
    ("empty file", b"", ["the config file is empty", "expected a mapping of keys"]),
    ("only comments", "# nothing here yet\n", ["the config file is empty"]),
    ("a list instead of a mapping", "- seed: 1\n- name: x\n", ["a config file must be a mapping of keys, got list"]),
    ("a plain scalar", "hello\n", ["a config file must be a mapping of keys, got str"]),
    ("not UTF-8 text (binary bytes)", b"\xff\xfe\x00seed: 1\x80\n", ["not a config file", "expected UTF-8 YAML text"]),
    ("duplicate key", f"extends: {TINY}\nseed: 1\nseed: 2\n", ["invalid YAML at line 3", "duplicate key 'seed'"]),
    ("duplicate key in a section", f"extends: {TINY}\noptim:\n  lr: 0.1\n  lr: 0.2\n",
     ["invalid YAML at line 4", "duplicate key 'lr'"]),
    ("extends is not a path", "extends: [a.yaml, b.yaml]\n", ["'extends' expects a file path (str)"]),
    ("section given as a scalar", f"extends: {TINY}\noptim: 3\n", ["'optim' must be a mapping with keys name, lr"]),
    ("unknown loss term", f"extends: {TINY}\nloss:\n  seg_terms: {{focal_dice: 1.0}}\n",
     ["loss.seg_terms has unknown term 'focal_dice'", "valid: bce, lovasz"]),
]


@pytest.mark.parametrize(("content", "fragments"), [
    pytest.param(content, fragments, id=case, marks=reliability(
        BAD, "config file", case, "exit 1; one line naming the file and what was expected; nothing written"))
    for case, content, fragments in CONFIG_FILES])
def test_config_file_refused(capfd, store, content, fragments):
    path = write(store / "bad.yaml", content)
    refused_train(capfd, store, path, str(path), *fragments)


# ---------------------------------------------------------------- study files, through `salt-exp study`

SPACE = "space:\n  optim.lr: {type: float, low: 1e-3, high: 1e-1, log: true}\n"
STUDY_HEAD = f"base: {TINY}\nset: {{lr_find.enabled: false, optim.lr: 0.01}}\n"
STUDY_FILES = [
    ("empty file", b"", ["'base' is required"]),
    ("not UTF-8 text (binary bytes)", b"\x89PNG\r\n\x1a\n\x00\xff", ["not a study file", "expected UTF-8 YAML text"]),
    ("a list instead of a mapping", "[1, 2]\n", ["a study file must be a mapping of keys, got list"]),
    ("duplicate key", STUDY_HEAD + SPACE + "n_trials: 3\nn_trials: 4\n", ["duplicate key 'n_trials'"]),
    ("base config missing", f"base: nope.yaml\n{SPACE}",
     ["'base'/'set' do not give a valid config", "config file not found", "nope.yaml"]),
    ("negative timeout", STUDY_HEAD + SPACE + "timeout: -5\n", ["'timeout' must be > 0, got -5"]),
    ("zero stale_after", STUDY_HEAD + SPACE + "stale_after: 0\n", ["'stale_after' must be > 0, got 0"]),
    ("space with low > high", STUDY_HEAD + "space:\n  optim.lr: {type: float, low: 0.5, high: 0.1}\n",
     ["'space.optim.lr' needs low <= high", "low=0.5 high=0.1"]),
    ("log space with low <= 0", STUDY_HEAD + "space:\n  optim.lr: {type: float, low: 0.0, high: 0.1, log: true}\n",
     ["'space.optim.lr' needs low <= high (and low > 0 with log)"]),
    ("grid sampler without a step", STUDY_HEAD + SPACE + "sampler: grid\n", ["'space.optim.lr' needs 'step'"]),
    ("space bound the config refuses", STUDY_HEAD + "space:\n  optim.momentum: {type: float, low: 0.5, high: 1.5}\n",
     ["'space.optim.momentum' does not apply to the base config", "must be >= 0.0 and < 1.0"]),
]


@pytest.mark.parametrize(("content", "fragments"), [
    pytest.param(content, fragments, id=case, marks=reliability(
        BAD, "study file", case, "exit 1; one line naming the file and the key or what was expected; no journal, "
        "no store, nothing written"))
    for case, content, fragments in STUDY_FILES])
def test_study_file_refused(capfd, store, content, fragments):
    path = write(store / "s.yaml", content)
    before = outputs(store)
    rc, out, err = cli(capfd, "study", path)
    assert rc == 1, (rc, out, err)
    one_error(err, str(path), *fragments)
    assert outputs(store) == before, sorted(outputs(store) - before)


STUDY_KEYS = ["base", "set", "space", "enqueue", "n_trials", "timeout", "folds", "sampler", "pruner", "stale_after",
              "ensemble"]


@reliability(BAD, "study file", "unknown top-level key (generated)",
             "exit 1; one line naming the file, the key and every valid top-level key; no journal, nothing written")
@GEN
@given(key=st.from_regex(r"[a-z][a-z_]{1,11}", fullmatch=True))
def test_unknown_study_key_generated(capfd, store, key):
    assume(key not in STUDY_KEYS and yaml.safe_load(key) == key)
    tried()
    path = write(store / "s.yaml", f"{STUDY_HEAD}{SPACE}{key}: 1\n")
    before = outputs(store)
    rc, _, err = cli(capfd, "study", path)
    assert rc == 1
    one_error(err, str(path), f"unknown key '{key}'; valid keys at top level: {', '.join(STUDY_KEYS)}")
    assert outputs(store) == before


# ---------------------------------------------------------------- datasets: `data check`, `data folds`, `train`


def _ids(root: Path) -> list[str]:
    return pd.read_csv(root / "train.csv", dtype=str)["id"].tolist()


def _png(path: Path, array: np.ndarray) -> None:
    assert cv2.imwrite(str(path), array)


def _edit_csv(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


def _set(df: pd.DataFrame, row: int, col: str, value: str) -> pd.DataFrame:
    df.loc[row, col] = value
    return df


def _image(root: Path, tid: str) -> Path:
    return root / "train" / "images" / f"{tid}.png"


def _mask(root: Path, tid: str) -> Path:
    return root / "train" / "masks" / f"{tid}.png"


def _rle_of(root: Path, tid: str) -> str:
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    return df.set_index("id").loc[tid, "rle_mask"]


# Each mutation breaks a fresh dataset and returns the fragments every refusal must hold. A "problem" is listed by
# `data check` in its report (exit 1); a "structural" one (the layout cannot be read) is its one error line.
def m_corrupt(r, t):
    _image(r, t).write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    return "problem", [f"{t}.png", "unreadable or corrupt PNG"]


def m_empty_png(r, t):
    _image(r, t).write_bytes(b"")
    return "problem", [f"{t}.png", "corrupt PNG"]


def m_truncated(r, t):
    p = _image(r, t)
    p.write_bytes(p.read_bytes()[:70])
    return "problem", [f"{t}.png", "unreadable or corrupt PNG"]


def m_jpeg(r, t):
    ok, data = cv2.imencode(".jpg", np.full((101, 101), 90, np.uint8))
    _image(r, t).write_bytes(data.tobytes())
    return "problem", [f"{t}.png", "does not start with the PNG signature"]


def m_16bit_image(r, t):
    _png(_image(r, t), np.full((101, 101), 300, np.uint16))
    return "problem", [f"{t}.png", "expected an 8-bit image, got uint16"]


def m_colour_image(r, t):
    a = np.zeros((101, 101, 3), np.uint8)
    a[..., 2] = 200
    _png(_image(r, t), a)
    return "problem", [f"{t}.png", "expected a grayscale tile (RGB with three equal channels)"]


def m_image_size(r, t):
    _png(_image(r, t), np.zeros((128, 128, 3), np.uint8))
    return "problem", [f"{t}.png", "expected a 101x101 tile, got 128x128"]


def m_mask_size(r, t):
    _png(_mask(r, t), np.zeros((101, 100), np.uint8))
    return "problem", [f"masks/{t}.png", "expected a 101x101 tile, got 100x101"]


def m_mask_values_8(r, t):
    _png(_mask(r, t), np.full((101, 101), 128, np.uint8))
    return "problem", [f"masks/{t}.png", "mask values must be 0 or 255 (uint8), found [128]"]


def m_mask_values_16(r, t):
    _png(_mask(r, t), np.full((101, 101), 7, np.uint16))
    return "problem", [f"masks/{t}.png", "mask values must be 0 or 65535 (uint16), found [7]"]


def m_colour_mask(r, t):
    a = np.zeros((101, 101, 3), np.uint8)
    a[..., 1] = 255
    _png(_mask(r, t), a)
    return "problem", [f"masks/{t}.png", "expected a grayscale mask (RGB with three equal channels), channels differ"]


def m_rle_mismatch(r, t):
    _edit_csv(r / "train.csv", lambda df: _set(df, 1, "rle_mask", "1 5"))
    return "problem", ["train.csv", f"rle_mask of id {t} does not match train/masks/{t}.png"]


def m_rle_malformed(r, t):
    _edit_csv(r / "train.csv", lambda df: _set(df, 1, "rle_mask", "1 x 7"))
    return "problem", ["train.csv", f"rle_mask of id {t} does not match"]


def m_missing_image(r, t):
    _image(r, t).unlink()
    return "problem", ["train.csv", f"id {t} has no image", f"images/{t}.png"]


def m_missing_mask(r, t):
    _mask(r, t).unlink()
    return "problem", ["train.csv", f"id {t} has no mask", f"masks/{t}.png"]


def m_extra_image(r, t):
    _png(_image(r, "0000000000"), np.zeros((101, 101, 3), np.uint8))
    return "problem", ["images/0000000000.png", "id 0000000000 is not listed in train.csv"]


def m_duplicate_id(r, t):
    _edit_csv(r / "train.csv", lambda df: pd.concat([df, df.iloc[[1]]]))
    return "problem", ["train.csv", f"duplicate id {t}"]


def m_duplicate_depth(r, t):
    _edit_csv(r / "depths.csv", lambda df: pd.concat([df, df[df["id"] == t]]))
    return "problem", ["depths.csv", f"duplicate id {t}"]


def m_missing_depth(r, t):
    _edit_csv(r / "depths.csv", lambda df: df[df["id"] != t])
    return "problem", ["depths.csv", f"missing depth for id {t}"]


def m_text_depth(r, t):
    _edit_csv(r / "depths.csv", lambda df: _set(df, 3, "z", "deep"))
    return "structural", ["depths.csv", "column z must be a finite number, got 'deep'"]


def m_inf_depth(r, t):
    _edit_csv(r / "depths.csv", lambda df: _set(df, 3, "z", "inf"))
    return "structural", ["depths.csv", "column z must be a finite number, got 'inf'"]


def m_mosaic_x(r, t):
    _edit_csv(r / "mosaics.csv", lambda df: _set(df, 2, "x", "1.5"))
    return "structural", ["mosaics.csv", "column x must be an integer, got '1.5'"]


def m_header(r, t):
    p = r / "train.csv"
    p.write_text(p.read_text().replace("id,rle_mask", "id,EncodedPixels", 1))
    return "structural", ["train.csv", "malformed CSV header id,EncodedPixels; expected id,rle_mask"]


def m_empty_csv(r, t):
    (r / "train.csv").write_bytes(b"")
    return "structural", ["train.csv", "malformed CSV header (empty); expected id,rle_mask"]


def m_no_rows(r, t):
    (r / "train.csv").write_text("id,rle_mask\n")
    return "structural", ["train.csv", "no rows (expected one id,rle_mask row per training tile)"]


def m_ragged(r, t):
    p = r / "train.csv"
    p.write_text(p.read_text() + f"{t},1 2,extra\n")
    return "structural", ["train.csv", "malformed CSV", "Expected 2 fields"]


def m_latin1(r, t):
    p = r / "depths.csv"
    p.write_bytes(p.read_bytes() + "café,10\n".encode("latin-1"))
    return "structural", ["depths.csv", "not a readable CSV", "utf-8"]


def m_broken_link(r, t):
    p = _image(r, t)
    p.unlink()
    p.symlink_to(r / "gone" / "x.png")
    return "problem", [f"{t}.png", "file not found"]


def m_png_is_folder(r, t):
    p = _mask(r, t)
    p.unlink()
    p.mkdir()
    return "problem", [f"masks/{t}.png", "file not found"]


def m_no_depths(r, t):
    (r / "depths.csv").unlink()
    return "structural", ["depths.csv", "file not found (expected a CSV with columns id,z)"]


def m_no_masks_folder(r, t):
    shutil.rmtree(r / "train" / "masks")
    return "structural", ["train/masks", "missing folder (expected the Kaggle TGS layout)"]


def m_test_corrupt(r, t):
    p = sorted((r / "test" / "images").iterdir())[0]
    p.write_bytes(b"nope")
    return "problem", [f"test/images/{p.name}", "corrupt PNG"]


DATASETS = [
    ("corrupt PNG", m_corrupt), ("empty (0-byte) PNG", m_empty_png), ("truncated PNG", m_truncated),
    ("JPEG data under a .png name", m_jpeg), ("16-bit image", m_16bit_image),
    ("colour image (channels differ)", m_colour_image), ("wrong image size", m_image_size),
    ("wrong mask size", m_mask_size), ("8-bit mask with values other than 0/255", m_mask_values_8),
    ("16-bit mask with values other than 0/65535", m_mask_values_16), ("colour mask (channels differ)", m_colour_mask),
    ("RLE does not match the mask PNG", m_rle_mismatch), ("malformed RLE in train.csv", m_rle_malformed),
    ("missing image for an id", m_missing_image), ("missing mask for an id", m_missing_mask),
    ("extra image not in train.csv", m_extra_image), ("duplicate id in train.csv", m_duplicate_id),
    ("duplicate id in depths.csv", m_duplicate_depth), ("missing depth", m_missing_depth),
    ("non-numeric depth", m_text_depth), ("infinite depth", m_inf_depth), ("non-integer mosaic position", m_mosaic_x),
    ("malformed CSV header", m_header), ("empty (0-byte) train.csv", m_empty_csv),
    ("train.csv with a header and no rows", m_no_rows), ("CSV row with an extra field", m_ragged),
    ("CSV not in UTF-8 (Latin-1)", m_latin1), ("image is a broken symlink", m_broken_link),
    ("mask path is a folder", m_png_is_folder), ("depths.csv missing", m_no_depths),
    ("train/masks folder missing", m_no_masks_folder), ("corrupt test image", m_test_corrupt),
]


@pytest.mark.parametrize("mutate", [
    pytest.param(fn, id=case, marks=reliability(
        BAD, "dataset", case, "data check: exit 1 and the problem named in its report (or its one error line); data "
        "folds and train: exit 1, one line naming the file and what was expected; no folds file, cache, run or store"))
    for case, fn in DATASETS])
def test_dataset_refused_by_check_folds_and_train(capfd, store, kaggle_dir, mutate):
    kind, fragments = mutate(kaggle_dir, _ids(kaggle_dir)[1])
    before = outputs(store)
    rc, out, err = cli(capfd, "data", "check", kaggle_dir)
    assert rc == 1, (rc, out, err)
    if kind == "problem":
        assert err == "" and "problems       " in out and "problems       0" not in out, (out, err)
        assert any(all(f in line for f in fragments) for line in out.splitlines()), out
    else:
        one_error(err, *fragments)
    for argv in (["data", "folds", kaggle_dir], ["train", TINY, "--fold", "0", "--set", f"data.root={kaggle_dir}"]):
        rc, out, err = cli(capfd, *argv)
        assert rc == 1 and out == "", (argv, rc, out, err)
        one_error(err, *fragments)
    assert outputs(store) == before, sorted(outputs(store) - before)


@reliability(BAD, "dataset", "mask with other values (generated: 8/16-bit, any stray value)",
             "data check: exit 1, the mask file and 'mask values must be 0 or <max>' in the report; data folds: "
             "exit 1, one line; nothing written")
@GEN
@given(dtype=st.sampled_from([np.uint8, np.uint16]), data=st.data())
def test_mask_values_generated(capfd, store, kaggle_dir, dtype, data):
    top = int(np.iinfo(dtype).max)
    stray = data.draw(st.integers(2, top - 1), label="stray value")
    rows = data.draw(st.lists(st.integers(0, 100), min_size=1, max_size=5, unique=True), label="rows")
    tid = _ids(kaggle_dir)[2]
    path = _mask(kaggle_dir, tid)
    original = path.read_bytes()
    tried()
    try:
        mask = np.zeros((101, 101), dtype)
        mask[:50] = top
        mask[rows] = stray
        _png(path, mask)
        before = outputs(store)
        rc, out, err = cli(capfd, "data", "check", kaggle_dir)
        assert rc == 1 and err == ""
        assert f"masks/{tid}.png: mask values must be 0 or {top} ({np.dtype(dtype).name}), found [{stray}]" in out, out
        rc, out, err = cli(capfd, "data", "folds", kaggle_dir)
        assert rc == 1
        one_error(err, f"masks/{tid}.png", f"mask values must be 0 or {top}")
        assert outputs(store) == before
    finally:
        path.write_bytes(original)


@reliability(BAD, "dataset", "wrong tile size (generated: image or mask, any size up to 160)",
             "data check: exit 1, the file and 'expected a 101x101 tile, got WxH' in the report; data folds: exit 1, "
             "one line; nothing written")
@GEN
@given(which=st.sampled_from(["images", "masks"]), h=st.integers(1, 160), w=st.integers(1, 160))
def test_tile_size_generated(capfd, store, kaggle_dir, which, h, w):
    assume((h, w) != (101, 101))
    tried()
    tid = _ids(kaggle_dir)[3]
    path = kaggle_dir / "train" / which / f"{tid}.png"
    original = path.read_bytes()
    try:
        _png(path, np.zeros((h, w, 3) if which == "images" else (h, w), np.uint8))
        before = outputs(store)
        rc, out, err = cli(capfd, "data", "check", kaggle_dir)
        assert rc == 1 and f"{which}/{tid}.png: expected a 101x101 tile, got {w}x{h}" in out, out
        rc, out, err = cli(capfd, "data", "folds", kaggle_dir)
        assert rc == 1
        one_error(err, f"{which}/{tid}.png", f"got {w}x{h}")
        assert outputs(store) == before
    finally:
        path.write_bytes(original)


CSVS = ("train.csv", "depths.csv", "mosaics.csv", "sample_submission.csv")


@pytest.fixture(scope="module")
def clean_kaggle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kaggle(tmp_path_factory.mktemp("clean") / "tgs")


@reliability(BAD, "dataset", "CSV with a UTF-8 BOM and/or CRLF line ends (generated per file), read as if clean",
             "data check: exit 0, the same report as the clean copy; the loader reads the same ids, tiles, masks and "
             "depths; data folds reuses the clean copy's folds")
@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(quirks=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=4, max_size=4))
def test_bom_and_crlf_csvs_read_as_if_clean(capfd, tmp_path_factory, clean_kaggle, quirks):
    assume(any(bom or crlf for bom, crlf, _ in quirks))
    tried()
    clean = clean_kaggle
    quirky = tmp_path_factory.mktemp("quirky") / "tgs"
    shutil.copytree(clean, quirky)
    for name, (bom, crlf, no_final_newline) in zip(CSVS, quirks, strict=True):
        data = (quirky / name).read_bytes()
        data = data.rstrip(b"\n") if no_final_newline else data
        data = data.replace(b"\n", b"\r\n") if crlf else data
        (quirky / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    reports = []
    for root in (clean, quirky):
        rc, out, err = cli(capfd, "data", "check", root, "--json")
        assert rc == 0 and err == "", (rc, err)
        reports.append({k: v for k, v in json.loads(out).items() if k != "root"})
    assert reports[0] == reports[1] and reports[1]["problems"] == []
    a, b = load_kaggle(clean, cache=False), load_kaggle(quirky, cache=False)
    for split in ("train", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert x.ids.tolist() == y.ids.tolist() and np.array_equal(x.images, y.images)
        assert np.array_equal(x.depths, y.depths) and (x.masks is None or np.array_equal(x.masks, y.masks))
    assert a.mosaics.equals(b.mosaics)
    folds = [cli(capfd, "data", "folds", root) for root in (clean, quirky)]
    assert [f[0] for f in folds] == [0, 0] and folds[0][1] == folds[1][1]  # same ids: the same persisted folds


# ---------------------------------------------------------------- command-line arguments


def _args_cases(tmp: Path, data: Path) -> dict[str, tuple[list[object], int, list[str]]]:
    """case -> (argv, exit status, fragments of the error line (or of argparse's last line)); the paths under
    ``tmp`` are made by :func:`_arg_paths`."""
    full = tmp / "full"
    t = str(TINY)
    root = f"data.root={data}"
    return {
        "unknown study: study-report": (["study-report", "nope"], 1,
                                        ["study 'nope'", "no Optuna storage at mlruns/optuna/nope.journal"]),
        "unknown study: ensemble": (["ensemble", "--study", "nope"], 1, ["registered model 'salt-nope'"]),
        "unknown study: swa": (["swa", "--study", "nope"], 1, ["study 'nope'", "no fold runs in experiment salt/nope"]),
        "unknown study: pseudo": (["pseudo", "--study", "nope"], 1, ["--study nope: no such study"]),
        "unknown study: viz evolution": (["viz", "evolution", "--study", "nope", "--no-log"], 1, ["study 'nope'"]),
        "unknown run: report --run": (["report", "--run", "0123456789abcdef0123456789abcdef"], 1,
                                      ["--run 0123456789abcdef0123456789abcdef: no such MLflow run"]),
        "fold out of range: train --fold 7 with 5 folds": (["train", t, "--fold", "7", "--set", root], 1,
                                                          ["--fold 7 is out of range", "valid 0..4"]),
        "negative fold: train --fold -1": (["train", t, "--fold", "-1", "--set", root], 1,
                                           ["--fold -1 is out of range", "valid 0..4", "cv CONFIG --full-fit"]),
        "fold out of range: cv --folds 0-9": (["cv", t, "--folds", "0-9", "--set", root], 1,
                                              ["--folds 0-9", "folds must be in 0..4"]),
        "malformed fold list: cv --folds a-b": (["cv", t, "--folds", "a-b"], 1,
                                                ["--folds: expected e.g. 0-4 or 0,2,3, got 'a-b'"]),
        "fold not an integer: train --fold x": (["train", t, "--fold", "x"], 2, ["argument --fold", "invalid int"]),
        "required argument missing: train without --fold": (["train", t], 2, ["required", "--fold"]),
        "unknown subcommand": (["bogus"], 2, ["argument command", "invalid choice: 'bogus'"]),
        "config path does not exist": (["train", tmp / "nope.yaml", "--fold", "0"], 1,
                                       ["config file not found", "nope.yaml"]),
        "config path is a folder": (["train", tmp / "adir.yaml", "--fold", "0"], 1,
                                    ["adir.yaml: is a folder (expected a config file, YAML)"]),
        "config path is a broken symlink": (["train", tmp / "broken.yaml", "--fold", "0"], 1,
                                            ["config file not found", "broken.yaml", "broken link", "gone.yaml"]),
        "study path is a folder": (["study", tmp / "adir.yaml"], 1, ["adir.yaml: is a folder (expected a study file"]),
        "study path does not exist": (["study", tmp / "nope.yaml"], 1, ["study file not found", "nope.yaml"]),
        "bad --set: no key before '='": (["train", t, "--fold", "0", "--set", "=3"], 1,
                                         ["override '=3': expected 'key.sub=value'"]),
        "bad --set: unclosed bracket in the value": (
            ["train", t, "--fold", "0", "--set", "model.decoder_channels=[8,8"], 1,
            ["override 'model.decoder_channels=[8,8'", "invalid YAML"]),
        "bad --set: duplicate key in a mapping value": (
            ["train", t, "--fold", "0", "--set", "loss.seg_terms={bce: 1, bce: 2}"], 1,
            ["override 'loss.seg_terms={bce: 1, bce: 2}'", "duplicate key 'bce'"]),
        "bad --set: infinite learning rate": (["train", t, "--fold", "0", "--set", "optim.lr=.inf"], 1,
                                              ["'optim.lr' must be a finite number > 0.0"]),
        "bad --set: unknown section": (["train", t, "--fold", "0", "--set", "optimizer.lr=0.1"], 1,
                                       ["unknown key 'optimizer'", "valid keys at top level: name, seed, data"]),
        "data check of a file, not a folder": (["data", "check", TINY], 1,
                                               [f"{TINY}: is a file, not a data folder"]),
        "data folds --scheme unknown": (["data", "folds", data, "--scheme", "bogus"], 1,
                                        ["folds scheme 'bogus' is unknown; valid schemes: random, coverage, depth, "
                                         "mosaic"]),
        "data folds --k 1": (["data", "folds", data, "--k", "1"], 1, ["folds k=1 must be between 2 and"]),
        "data folds --k above the number of tiles": (["data", "folds", data, "--k", "99"], 1,
                                                     ["folds k=99 must be between 2 and the number of tiles (12)"]),
        "data synth --sections 0": (["data", "synth", "--out", tmp / "synth", "--sections", "0"], 1,
                                    ["sections must be >= 1, got 0"]),
        "data synth --out onto a non-empty folder": (["data", "synth", "--out", full], 1,
                                                     [str(full), "exists and is not empty"]),
        "ensemble --threshold not a number": (["ensemble", "--study", "nope", "--threshold", "abc"], 1,
                                              ["--threshold: expected 'search' or a number, got 'abc'"]),
        "ensemble --seam-max-cost out of range": (["ensemble", "--study", "nope", "--seam-max-cost", "5"], 1,
                                                  ["'seam_max_cost' must be >= 0.0 and <= 2.0, got 5.0"]),
        "ensemble --top-cycles 0": (["ensemble", "--study", "nope", "--top-cycles", "0"], 1,
                                    ["'top_cycles' must be >= 1, got 0"]),
    }


def _arg_paths(tmp: Path) -> None:
    """A folder where a file is expected, a broken link, and a non-empty folder that must stay as it is."""
    (tmp / "adir.yaml").mkdir(parents=True)
    (tmp / "broken.yaml").symlink_to(tmp / "gone.yaml")
    write(tmp / "full" / "keep.txt", "mine")


ARG_CASES = list(_args_cases(Path("tmp"), Path("data")))
STORE_FILES = {"mlflow.db", "mlruns/mlflow.db"}  # opening an empty store to look a study up is not an output


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case, marks=reliability(
        BAD, "CLI arguments", case, "exit 1 with one line naming the argument or path and what was expected (exit 2: "
        "argparse's last line names the argument); nothing written: no run, experiment, model, journal or file"))
    for case in ARG_CASES])
def test_cli_arguments_refused(capfd, store, kaggle_dir, case):
    from mlflow.tracking import MlflowClient

    _arg_paths(store / "args")
    argv, status, fragments = _args_cases(store / "args", kaggle_dir)[case]
    before = outputs(store)
    rc, out, err = cli(capfd, *argv)
    assert rc == status, (rc, out, err)
    (one_error if status == 1 else usage_error)(err, *fragments)
    assert out == ""
    added = {p.replace(f"{store}/", "") for p in outputs(store) - before}
    cached = {p for p in added if dataset_cache() in (Path(p), Path(p).parent)}  # the valid dataset read: no output
    assert added - cached <= STORE_FILES, sorted(added)
    if added & STORE_FILES:  # the store a lookup opened holds nothing of the command's
        client = MlflowClient()
        assert [e.name for e in client.search_experiments()] == ["Default"]
        assert client.search_registered_models() == []
    assert sorted((store / "args" / "full").iterdir()) == [store / "args" / "full" / "keep.txt"]


@reliability(BAD, "CLI arguments", "unknown study: doctor",
             "exit 1 with one finding naming the study, the store and the journal it looked for (not \"no findings\")")
def test_doctor_says_an_unknown_study_is_unknown(capfd, store):
    rc, out, err = cli(capfd, "doctor", "--study", "nope")
    assert rc == 1, (out, err)
    finding, summary = out.strip().splitlines()
    assert finding.startswith("nope: no such study:") and "salt/nope" in finding and "nope.journal" in finding
    assert summary.startswith("doctor: 1 finding(s) in study nope")


@reliability(BAD, "CLI arguments", "config file without read permission",
             "exit 1; one line naming the file, 'unreadable config file'; nothing written (skipped as root: chmod 000 "
             "does not stop root's reads, the folder and broken-link cases stand in)")
def test_config_without_read_permission(capfd, store):
    path = write(store / "secret.yaml", f"extends: {TINY}\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reads (see the folder and broken-link cases)")
        refused_train(capfd, store, path, str(path), "unreadable config file")
    finally:
        path.chmod(0o644)


# ---------------------------------------------------------------- submissions to `score`

IDS = [f"{i:010x}" for i in range(6)]


def _truth(i: int) -> np.ndarray:
    m = np.zeros((101, 101), np.uint8)
    if i % 2:
        m[10 + i:60, 5:40 + i] = 1
    return m


def score_pair(tmp: Path) -> tuple[Path, Path]:
    """A solution (with Usage) and a perfect submission of six tiles."""
    rles = [rle_encode(_truth(i)) for i in range(len(IDS))]
    pd.DataFrame({"id": IDS, "rle_mask": rles, "Usage": ["Public", "Private"] * 3}).to_csv(tmp / "solution.csv",
                                                                                         index=False)
    pd.DataFrame({"id": IDS, "rle_mask": rles}).to_csv(tmp / "submission.csv", index=False)
    return tmp / "submission.csv", tmp / "solution.csv"


def refused_score(capfd, tmp: Path, sub: Path, sol: Path, *fragments: str) -> str:
    before = tree(tmp)
    rc, out, err = cli(capfd, "score", sub, sol)
    assert rc == 1 and out == "", (rc, out, err)
    line = one_error(err, *fragments)
    assert tree(tmp) == before
    return line


def _runs(draw, n: int) -> list[int]:
    """n valid, sorted, non-overlapping (start, length) pairs within 101x101, flattened."""
    out, pos = [], 1
    for _ in range(n):
        pos += draw(st.integers(0, 40))
        length = draw(st.integers(1, 40))
        out += [pos, length]
        pos += length
    return out


@st.composite
def bad_rle(draw, kind: str) -> str:
    """An RLE that breaks exactly the rule ``kind``; the other runs are valid."""
    runs = _runs(draw, draw(st.integers(1, 4)))
    i = 2 * draw(st.integers(0, len(runs) // 2 - 1))  # the run that is broken
    if kind == "odd":
        tokens = [str(v) for v in runs] + [str(draw(st.integers(1, 10201)))]
    elif kind == "token":
        tokens = [str(v) for v in runs]
        bad = draw(st.sampled_from(["x", "1.5", "2e3", "0x10", "--4", "1,5", "½", "NaN"]))
        tokens[i + draw(st.integers(0, 1))] = bad
    elif kind == "length":
        runs[i + 1] = draw(st.integers(-10201, 0))
        tokens = [str(v) for v in runs]
    elif kind == "start":
        runs[i] = draw(st.integers(-10201, 0))
        tokens = [str(v) for v in runs]
    elif kind == "overlong":
        start = draw(st.integers(1, 10201 + 50))
        runs[-2:] = [start, draw(st.integers(max(1, 10202 - start + 1), 20000))]
        tokens = [str(v) for v in runs]
    elif kind == "order":
        assume(len(runs) >= 4)
        pairs = [runs[k:k + 2] for k in range(0, len(runs), 2)]
        pairs[0], pairs[-1] = pairs[-1], pairs[0]
        tokens = [str(v) for p in pairs for v in p]
    elif kind == "overlap":
        assume(len(runs) >= 4)
        i = min(i, len(runs) - 4)
        runs[i + 2] = draw(st.integers(runs[i], runs[i] + runs[i + 1] - 1))  # the next run starts inside this one
        tokens = [str(v) for v in runs]
    else:  # int64
        runs[i + draw(st.integers(0, 1))] = draw(st.integers(2**63, 2**70))
        tokens = [str(v) for v in runs]
    return " ".join(tokens)


RLE_KINDS = {
    "odd": ("malformed RLE: odd number of values", "odd number of values"),
    "token": ("malformed RLE: a token that is not an integer", "expected integers 'start length ...'"),
    "length": ("malformed RLE: zero or negative run length", "positive lengths"),
    "start": ("malformed RLE: start below 1", "runs must be 1-indexed"),
    "overlong": ("overlong run: past the 101x101 pixels", "within 101x101 (10201 pixels)"),
    "order": ("malformed RLE: runs not in increasing order", "runs must be sorted and non-overlapping"),
    "overlap": ("malformed RLE: overlapping runs", "runs must be sorted and non-overlapping"),
    "int64": ("malformed RLE: integer beyond 64 bits", "expected integers"),
}


@pytest.mark.parametrize("kind", [
    pytest.param(kind, id=kind, marks=reliability(
        BAD, "submission (score)", f"{case} (generated)", f"exit 1; one line naming the submission, the id, "
        f"rle_mask and '{expected}'; nothing written"))
    for kind, (case, expected) in RLE_KINDS.items()])
@GEN
@given(data=st.data())
def test_malformed_rle_generated(capfd, tmp_path, kind, data):
    rle = data.draw(bad_rle(kind), label="rle")
    row = data.draw(st.integers(0, len(IDS) - 1), label="row")
    tried()
    sub, sol = score_pair(tmp_path)
    _edit_csv(sub, lambda df: _set(df, row, "rle_mask", rle))
    refused_score(capfd, tmp_path, sub, sol, str(sub), f"id={IDS[row]} rle_mask", "malformed RLE", RLE_KINDS[kind][1])


def _rows(ids: list[str]) -> str:
    return "id,rle_mask\n" + "".join(f"{i},\n" for i in ids)


SUBMISSIONS = {
    "wrong ids (every id of another test set)": (lambda p: _rows([f"{i:010x}" for i in range(100, 106)]),
                                                 ["missing id 0000000000 (6 solution ids have no row)"]),
    "header only, no rows": (lambda p: "id,rle_mask\n", ["missing id 0000000000"]),
    "empty (0-byte) file": (lambda p: b"", ["malformed CSV header (empty); expected id,rle_mask"]),
    "extra column": (lambda p: "id,rle_mask,score\n" + "".join(f"{i},,1\n" for i in IDS),
                     ["malformed CSV header id,rle_mask,score; expected id,rle_mask"]),
    "not UTF-8 (Latin-1 bytes)": (lambda p: p.read_bytes() + "café,\n".encode("latin-1"),
                                  ["not a readable CSV", "utf-8"]),
    "row with an extra field": (lambda p: p.read_text() + f"{IDS[0]},1 2,3\n", ["malformed CSV", "Expected 2 fields"]),
    "unterminated quote": (lambda p: f'id,rle_mask\n"{IDS[0]},1 2\n', ["malformed CSV"]),
    "id with an RLE of only spaces is an empty mask, other ids missing": (lambda p: f"id,rle_mask\n{IDS[0]},   \n",
                                                                          ["missing id 0000000001"]),
}


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case, marks=reliability(
        BAD, "submission (score)", case, "exit 1; one line naming the submission and what was expected; nothing "
        "written")) for case in SUBMISSIONS])
def test_submission_refused(capfd, tmp_path, case):
    make, fragments = SUBMISSIONS[case]
    sub, sol = score_pair(tmp_path)
    content = make(sub)
    write(sub, content)
    refused_score(capfd, tmp_path, sub, sol, str(sub), *fragments)


@pytest.mark.parametrize(("which", "folder"), [
    pytest.param(w, folder, id=f"{w} {what}", marks=reliability(
        BAD, "submission (score)", f"{w} path {what}", f"exit 1; one line naming the {w} path and "
        f"'{'is a folder (expected a CSV file' if folder else 'file not found'}'; nothing written"))
    for w in ("submission", "solution") for folder, what in ((True, "is a folder"), (False, "does not exist"))])
def test_score_paths_refused(capfd, tmp_path, which, folder):
    sub, sol = score_pair(tmp_path)
    target = sub if which == "submission" else sol
    target.unlink()
    if folder:
        target.mkdir()
    refused_score(capfd, tmp_path, sub, sol, str(target),
                  "is a folder (expected a CSV file" if folder else "file not found (expected a CSV")


@reliability(BAD, "submission (score)", "duplicate ids in the solution",
             "exit 1; one line naming the solution and the duplicated id; nothing written")
def test_duplicate_solution_ids_refused(capfd, tmp_path):
    sub, sol = score_pair(tmp_path)
    _edit_csv(sol, lambda df: pd.concat([df, df.iloc[[2]]]))
    refused_score(capfd, tmp_path, sub, sol, str(sol), f"duplicate id {IDS[2]}")


@reliability(BAD, "submission (score)", "UTF-8 BOM and/or CRLF line ends (generated, either file), scored as if clean",
             "exit 0 and the same --json result (score, public, private, bins) as the clean files")
@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(quirks=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=2), miss=st.integers(0, 5))
def test_bom_and_crlf_submissions_score_as_if_clean(capfd, tmp_path_factory, quirks, miss):
    assume(any(bom or crlf for bom, crlf in quirks))
    tried()
    tmp = tmp_path_factory.mktemp("score")
    sub, sol = score_pair(tmp)
    _edit_csv(sub, lambda df: _set(df, miss, "rle_mask", "1 5"))  # one wrong mask, so the score is not trivially 1
    rc, out, _ = cli(capfd, "score", sub, sol, "--json")
    clean = json.loads(out)
    for path, (bom, crlf) in zip((sub, sol), quirks, strict=True):
        data = path.read_bytes()
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (data.replace(b"\n", b"\r\n") if crlf else data))
    rc, out, err = cli(capfd, "score", sub, sol, "--json")
    assert rc == 0 and err == "", err
    assert json.loads(out) == clean and clean["score"] < 1
