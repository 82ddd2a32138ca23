"""A study file (``studies/<name>.yaml``) read into a frozen, validated :class:`StudySpec`.

Layout (every key but ``base`` and ``space`` is optional)::

    base: ../configs/tiny.yaml          # experiment config, relative to the study file
    set: {data.root: data/synthetic}    # dotted overrides applied to every trial
    space:                              # dotted config key -> distribution
      optim.lr: {type: float, low: 1e-3, high: 1e-1, log: true}
      model.encoder: {type: categorical, choices: [resnet34, se_resnext50_32x4d]}
    enqueue: [{model.encoder: resnet34}]   # trials run first (keys from space)
    n_trials: 10
    timeout: null                       # seconds per invocation, null: none
    folds: [0, 1, 2, 3, 4]
    sampler: {type: tpe, seed: 42}      # tpe | random | grid
    pruner: {type: median}              # median | hyperband | none
    stale_after: 600                    # seconds without heartbeat before a remote worker counts as gone
    ensemble: {top_cycles: 2}           # build the ensemble once the trials are done (EnsembleOptions)

The file is read with the config's YAML parser (``1e-4`` is a float) and checked against
:class:`StudyFile` by the config engine, so a mistake is the same one-line ``SaltError`` as in a config
file: the file, the dotted key, the valid keys or the expected type. Each space key is then applied to
the base config with its low and high values / every choice (and each enqueued trial once), so a
misspelled config key fails before any training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from salt_exp.config import ExperimentConfig, apply_overrides, load_config
from salt_exp.config.engine import build, check_mapping, convert, num, unknown_key
from salt_exp.config.files import read_yaml_mapping
from salt_exp.ensemble.options import EnsembleOptions
from salt_exp.errors import SaltError

# ---------------------------------------------------------------- the file's schema

# Sampler and pruner defaults are Optuna's: only the keys a file sets are passed on.


@dataclass(frozen=True)
class TPESampler:
    type: Literal["tpe"] = "tpe"
    seed: int | None = None
    n_startup_trials: int = num(10, ge=0)
    multivariate: bool = False


@dataclass(frozen=True)
class RandomSampler:
    type: Literal["random"] = "random"
    seed: int | None = None


@dataclass(frozen=True)
class GridSampler:
    type: Literal["grid"] = "grid"
    seed: int | None = None


@dataclass(frozen=True)
class MedianPruner:
    type: Literal["median"] = "median"
    n_startup_trials: int = num(5, ge=0)
    n_warmup_steps: int = num(0, ge=0)
    interval_steps: int = num(1, ge=1)


@dataclass(frozen=True)
class HyperbandPruner:
    type: Literal["hyperband"] = "hyperband"
    min_resource: int = num(1, ge=1)
    max_resource: int | Literal["auto"] = num("auto", ge=1)
    reduction_factor: int = num(3, ge=2)


@dataclass(frozen=True)
class NoPruner:
    type: Literal["none"] = "none"


@dataclass(frozen=True, kw_only=True)
class FloatSpace:
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = num(None, gt=0)


@dataclass(frozen=True, kw_only=True)
class IntSpace:
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int | None = num(None, ge=1)


@dataclass(frozen=True, kw_only=True)
class CategoricalSpace:
    type: Literal["categorical"]
    choices: tuple[Any, ...]


@dataclass(frozen=True, kw_only=True)
class StudyFile:
    """The keys of a study file (see the module docstring)."""

    base: str
    set: dict[str, Any] = field(default_factory=dict)
    space: dict[str, FloatSpace | IntSpace | CategoricalSpace]
    enqueue: tuple[dict[str, Any], ...] = ()
    n_trials: int = 10  # below 0 counts as 0
    timeout: float | None = num(None, gt=0)
    folds: tuple[int, ...] | None = None  # null: all of data.n_folds
    sampler: TPESampler | RandomSampler | GridSampler = field(default_factory=TPESampler)
    pruner: MedianPruner | HyperbandPruner | NoPruner = field(default_factory=MedianPruner)
    stale_after: float = num(600.0, gt=0)
    ensemble: EnsembleOptions | None = None


# ---------------------------------------------------------------- the validated spec


@dataclass(frozen=True, kw_only=True)
class Param:
    """One search-space entry. Categorical choices that are not plain scalars (a dict of loss terms)
    are carried as their JSON text, since Optuna choices must be None/bool/int/float/str."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    name: str
    path: Path
    base: Path
    overrides: tuple[str, ...]
    space: tuple[Param, ...]
    enqueue: tuple[dict[str, Any], ...]
    n_trials: int
    timeout: float | None
    folds: tuple[int, ...]
    sampler: dict[str, Any]  # type and the keys the file sets (Optuna's defaults for the rest)
    pruner: dict[str, Any]
    stale_after: float
    ensemble: EnsembleOptions | None = None  # build the ensemble after the study

    def base_config(self) -> ExperimentConfig:
        return load_config(self.base, self.overrides)


def override_text(key: str, value: Any) -> str:
    """``key=value`` as a config override (strings as written, everything else as JSON, which is YAML)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def encode_choice(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """Overrides of one trial from its Optuna params (choice texts are YAML, so they apply as written)."""
    return [override_text(k, v) for k, v in params.items()]


# ---------------------------------------------------------------- checks beyond the schema


def _blank(key: str, value: Any) -> bool:
    """``null`` for an optional section, an empty ``set``/``enqueue`` and ``ensemble: false`` mean "not set"."""
    if value is None:
        return key in ("set", "enqueue", "sampler", "pruner")
    return (key in ("set", "enqueue") and value in ({}, [])) or (key == "ensemble" and value is False)


def _param(where: str, key: str, raw: FloatSpace | IntSpace | CategoricalSpace) -> Param:
    if isinstance(raw, CategoricalSpace):
        return Param(key=key, type=raw.type, choices=tuple(encode_choice(c) for c in raw.choices))
    if raw.low > raw.high or (raw.log and raw.low <= 0):
        raise SaltError(f"{where}: 'space.{key}' needs low <= high (and low > 0 with log), "
                        f"got low={raw.low} high={raw.high}")
    return Param(key=key, type=raw.type, low=raw.low, high=raw.high, log=raw.log, step=raw.step)


def _probe(where: str, base: ExperimentConfig, overrides: list[str], key: str) -> None:
    try:
        apply_overrides(base, overrides)
    except SaltError as exc:
        raise SaltError(f"{where}: '{key}' does not apply to the base config: {exc}") from None


def _enqueued(where: str, i: int, item: dict[str, Any], *, space: tuple[Param, ...], base: ExperimentConfig) -> dict:
    """One enqueued trial: keys from the space, values of their types or choices (encoded), applied once."""
    by_key, fixed = {p.key: p for p in space}, {}
    for k, value in item.items():
        key = f"enqueue[{i}].{k}"
        if k not in by_key:
            raise unknown_key(str(k), f"enqueue[{i}].", list(by_key), where)
        p = by_key[k]
        if p.type != "categorical":
            fixed[k] = convert(value, int if p.type == "int" else float, key, where)
        elif encode_choice(value) in p.choices:
            fixed[k] = encode_choice(value)
        else:
            raise SaltError(f"{where}: '{key}' expects one of the choices of space.{k} "
                            f"({', '.join(map(str, p.choices))}), got {value!r}")
    _probe(where, base, trial_overrides(fixed), f"enqueue[{i}]")
    return fixed


def _folds(where: str, folds: tuple[int, ...] | None, n_folds: int) -> tuple[int, ...]:
    if folds is None:
        return tuple(range(n_folds))
    if len(set(folds)) != len(folds):
        raise SaltError(f"{where}: 'folds' must be a non-empty list of distinct fold numbers, got {list(folds)!r}")
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise SaltError(f"{where}: 'folds' has {bad[0]} out of range: data.n_folds is {n_folds} "
                        f"(valid 0..{n_folds - 1})")
    return folds


def _base_config(where: str, path: Path, overrides: tuple[str, ...]) -> ExperimentConfig:
    try:
        return load_config(path, overrides)
    except SaltError as exc:
        raise SaltError(f"{where}: 'base'/'set' do not give a valid config: {exc}") from None


def _space(where: str, file: StudyFile, base_cfg: ExperimentConfig) -> tuple[Param, ...]:
    """The search space, each choice and both ends applied to the base config: a bad key fails now, not in trial 7."""
    space = tuple(_param(where, key, p) for key, p in file.space.items())
    for p in space:
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            _probe(where, base_cfg, [override_text(p.key, value)], f"space.{p.key}")
    return space


def _check_grid(where: str, file: StudyFile, space: tuple[Param, ...]) -> None:
    if file.sampler.type == "grid":
        for p in space:
            if p.type == "float" and p.step is None:
                raise SaltError(f"{where}: 'space.{p.key}' needs 'step' (or categorical choices) with the grid sampler")


def load_study_spec(path: str | Path, extra_overrides: tuple[str, ...] | list[str] = ()) -> StudySpec:
    """Read and validate ``path``; ``extra_overrides`` (``--set``) apply to every trial after the file's ``set``."""
    path = Path(path)
    if path.is_dir():
        raise SaltError(f"{path}: is a folder (expected a study file, studies/<name>.yaml)")
    if not path.is_file():
        raise SaltError(f"study file not found: {path}")
    where = str(path)
    checked = check_mapping({k: v for k, v in read_yaml_mapping(path, "study").items() if not _blank(k, v)},
                            StudyFile, where)
    file: StudyFile = build(StudyFile, checked)
    overrides = (*(override_text(k, v) for k, v in file.set.items()), *extra_overrides)
    base = (path.parent / file.base).resolve()
    base_cfg = _base_config(where, base, overrides)
    space = _space(where, file, base_cfg)
    enqueue = tuple(_enqueued(where, i, item, space=space, base=base_cfg) for i, item in enumerate(file.enqueue))
    _check_grid(where, file, space)
    return StudySpec(
        name=path.stem, path=path.resolve(), base=base, overrides=tuple(overrides), space=space, enqueue=enqueue,
        n_trials=max(file.n_trials, 0), timeout=file.timeout, folds=_folds(where, file.folds, base_cfg.data.n_folds),
        sampler=checked.get("sampler", {"type": file.sampler.type}),
        pruner=checked.get("pruner", {"type": file.pruner.type}),
        stale_after=file.stale_after, ensemble=file.ensemble,
    )
