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

Every problem is a one-line ``SaltError`` naming the file and the key, listing the valid keys or
choices. Each space key is applied at load time with its low and high values / every choice (and
each enqueued trial once), so a misspelled config key fails before any training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from salt_exp.config import ExperimentConfig, apply_overrides, load_config
from salt_exp.errors import SaltError

TOP_KEYS = ("base", "set", "space", "enqueue", "n_trials", "timeout", "folds", "sampler", "pruner", "stale_after",
            "ensemble")
ENSEMBLE_KEYS = ("top_cycles", "threshold", "postprocess", "report")
PARAM_TYPES = ("float", "int", "categorical")
PARAM_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
              "categorical": ("type", "choices")}
SAMPLERS = {"tpe": ("type", "seed", "n_startup_trials", "multivariate"), "random": ("type", "seed"),
            "grid": ("type", "seed")}
PRUNERS = {"median": ("type", "n_startup_trials", "n_warmup_steps", "interval_steps"),
           "hyperband": ("type", "min_resource", "max_resource", "reduction_factor"), "none": ("type",)}


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    stale_after: float
    ensemble: dict[str, Any] | None = None  # build the ensemble after the study (top_cycles, threshold, postprocess)

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


class _Where:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, message: str) -> SaltError:
        return SaltError(f"{self.path}: '{key}' {message}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a mapping, got {value!r}")
        for k in value:
            if k not in allowed:
                raise self.error(f"{key}.{k}" if key else k, f"is not a valid key; valid: {', '.join(allowed)}")
        return dict(value)

    def number(self, value: Any, key: str, kind: type = float) -> float | int:
        try:
            out = kind(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            out = None
        if out is None or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise self.error(key, f"must be a{'n int' if kind is int else ' number'}, got {value!r}")
        return out


def _param(w: _Where, key: str, raw: Any) -> Param:
    where = f"space.{key}"
    if not isinstance(raw, Mapping) or raw.get("type") not in PARAM_TYPES:
        got = raw.get("type") if isinstance(raw, Mapping) else raw
        raise w.error(f"{where}.type", f"must be one of {', '.join(PARAM_TYPES)}, got {got!r}")
    kind = raw["type"]
    spec = w.mapping(raw, where, PARAM_KEYS[kind])
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise w.error(f"{where}.choices", f"must be a non-empty list, got {choices!r}")
        return Param(key, kind, choices=tuple(encode_choice(c) for c in choices))
    num = int if kind == "int" else float
    for k in ("low", "high"):
        if k not in spec:
            raise w.error(f"{where}.{k}", f"is required for type {kind}")
    low, high = w.number(spec["low"], f"{where}.low", num), w.number(spec["high"], f"{where}.high", num)
    if low > high or (spec.get("log") and low <= 0):
        raise w.error(where, f"needs low <= high (and low > 0 with log), got low={low} high={high}")
    step = w.number(spec["step"], f"{where}.step", num) if spec.get("step") is not None else None
    return Param(key, kind, low, high, bool(spec.get("log", False)), step)


def _validate_value(w: _Where, p: Param, value: Any, where: str) -> Any:
    if p.type == "categorical":
        enc = encode_choice(value)
        if enc not in p.choices:
            raise w.error(where, f"must be one of the choices of space.{p.key}: {', '.join(map(str, p.choices))}; got {value!r}")
        return enc
    return w.number(value, where, int if p.type == "int" else float)


def _probe(w: _Where, base: ExperimentConfig, overrides: list[str], key: str) -> None:
    try:
        apply_overrides(base, overrides)
    except SaltError as exc:
        raise w.error(key, f"does not apply to the base config: {exc}") from None


def _options(w: _Where, raw: Any, key: str, table: dict[str, tuple[str, ...]], default: str) -> dict[str, Any]:
    raw = {"type": default} if raw is None else ({"type": raw} if isinstance(raw, str) else raw)
    if not isinstance(raw, Mapping) or raw.get("type", default) not in table:
        got = raw.get("type") if isinstance(raw, Mapping) else raw
        raise w.error(f"{key}.type", f"must be one of {', '.join(table)}, got {got!r}")
    out = w.mapping(raw, key, table[raw.get("type", default)])
    out.setdefault("type", default)
    return out


def _folds(w: _Where, raw: Any, n_folds: int) -> tuple[int, ...]:
    if raw is None:
        return tuple(range(n_folds))
    if not isinstance(raw, list) or not raw or len(set(map(str, raw))) != len(raw):
        raise w.error("folds", f"must be a non-empty list of distinct fold numbers, got {raw!r}")
    folds = tuple(int(w.number(f, "folds", int)) for f in raw)
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise w.error("folds", f"has {bad[0]} out of range: data.n_folds is {n_folds} (valid 0..{n_folds - 1})")
    return folds


def load_study_spec(path: str | Path, extra_overrides: tuple[str, ...] | list[str] = ()) -> StudySpec:
    """Read and validate ``path``; ``extra_overrides`` (``--set``) apply to every trial after the file's ``set``."""
    path = Path(path)
    if not path.is_file():
        raise SaltError(f"study file not found: {path}")
    w = _Where(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SaltError(f"{path}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    raw = w.mapping(raw if raw is not None else {}, "", TOP_KEYS)
    for key in ("base", "space"):
        if key not in raw:
            raise w.error(key, "is required")
    if not isinstance(raw["base"], str):
        raise w.error("base", f"must be a config file path, got {raw['base']!r}")
    sets = raw.get("set") or {}
    if not isinstance(sets, Mapping):
        raise w.error("set", f"must be a mapping of dotted.key: value, got {sets!r}")
    overrides = (*(override_text(k, v) for k, v in sets.items()), *extra_overrides)
    base = (path.parent / raw["base"]).resolve()
    try:
        base_cfg = load_config(base, overrides)
    except SaltError as exc:
        raise SaltError(f"{path}: 'base'/'set' do not give a valid config: {exc}") from None
    space_raw = raw["space"]
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise w.error("space", "must be a non-empty mapping of dotted.key: {type, ...}")
    space = tuple(_param(w, str(k), v) for k, v in space_raw.items())
    for p in space:  # every choice and both ends: a bad key or value fails now, not in trial 7
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            _probe(w, base_cfg, [override_text(p.key, value)], f"space.{p.key}")
    by_key = {p.key: p for p in space}
    enqueue = []
    for i, item in enumerate(raw.get("enqueue") or []):
        item = w.mapping(item, f"enqueue[{i}]", tuple(by_key))
        fixed = {k: _validate_value(w, by_key[k], v, f"enqueue[{i}].{k}") for k, v in item.items()}
        _probe(w, base_cfg, trial_overrides(fixed), f"enqueue[{i}]")
        enqueue.append(fixed)
    n_trials = int(w.number(raw.get("n_trials", 10), "n_trials", int))
    timeout = raw.get("timeout")
    sampler = _options(w, raw.get("sampler"), "sampler", SAMPLERS, "tpe")
    if sampler["type"] == "grid":
        for p in space:
            if p.type == "float" and p.step is None:
                raise w.error(f"space.{p.key}", "needs 'step' (or categorical choices) with the grid sampler")
    return StudySpec(
        name=path.stem, path=path.resolve(), base=base, overrides=tuple(overrides), space=space,
        enqueue=tuple(enqueue), n_trials=max(n_trials, 0),
        timeout=None if timeout is None else float(w.number(timeout, "timeout")),
        folds=_folds(w, raw.get("folds"), base_cfg.data.n_folds), sampler=sampler,
        pruner=_options(w, raw.get("pruner"), "pruner", PRUNERS, "median"),
        stale_after=float(w.number(raw.get("stale_after", 600), "stale_after")),
        ensemble=_ensemble(w, raw.get("ensemble")),
    )


def _ensemble(w: _Where, raw: Any) -> dict[str, Any] | None:
    """The optional ``ensemble:`` section: built by ``salt-exp study`` once the trials are done."""
    if raw is None or raw is False:
        return None
    opts = {"top_cycles": 2, "threshold": "search", "postprocess": "auto", "report": False,
            **w.mapping(raw, "ensemble", ENSEMBLE_KEYS)}
    if not isinstance(opts["report"], bool):
        raise w.error("ensemble.report", f"must be true or false, got {opts['report']!r}")
    if not isinstance(opts["top_cycles"], int) or opts["top_cycles"] < 1:
        raise w.error("ensemble.top_cycles", f"must be an integer >= 1, got {opts['top_cycles']!r}")
    if opts["threshold"] != "search" and not isinstance(opts["threshold"], int | float):
        raise w.error("ensemble.threshold", f"must be 'search' or a number, got {opts['threshold']!r}")
    return opts
