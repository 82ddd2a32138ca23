"""One experiment = one frozen, typed config: YAML (with ``extends:``) plus dotted overrides.

``load_config("configs/study.yaml", ["optim.lr=auto", "model.decoder_channels=[64,32,16,8,4]"])``
reads the file, follows ``extends:`` (a path relative to the extending file, recursive, deep-merged
section by section, cycles rejected), applies the overrides (values parsed as YAML) and returns an
:class:`ExperimentConfig`. Unknown keys, wrong types, out-of-range numbers and invalid choices raise a
one-line :class:`~salt_exp.errors.SaltError` naming the dotted key, the source and the valid options.
Defaults are the reference pipeline (GUIDE section 2); ``configs/base.yaml`` spells them out.

Build the config at entry points and pass explicit typed arguments below them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from salt_exp.errors import SaltError

FoldsScheme = Literal["random", "coverage", "depth", "mosaic"]
Channels = Literal["raw", "depth", "coord"]
PaddingMode = Literal["replicate", "reflect", "reflect_replicate", "zero", "biharmonic", "resize"]
OptimName = Literal["sgd", "adam", "adamw"]
Device = Literal["auto", "cpu", "cuda"]


def _num(default: Any, **bounds: float) -> Any:
    """A numeric field with bounds (``ge``, ``gt``, ``le``, ``lt``) checked on load, per element."""
    return field(default=default, metadata=bounds)


def _prob(default: float) -> Any:
    return _num(default, ge=0.0, le=1.0)


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/synthetic"
    folds_scheme: FoldsScheme = "random"
    n_folds: int = _num(5, ge=2)
    folds_seed: int = 42
    channels: Channels = "raw"  # raw: 1 plane; depth/coord: tile, plane, tile*plane


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "se_resnext50_32x4d"
    weights: str = "none"
    decoder_channels: tuple[int, ...] = _num((256, 128, 64, 32, 16), ge=1)
    scse: bool = True
    hypercolumn: bool = True
    deep_supervision: bool = True
    dropout: float = _num(0.0, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class PaddingConfig:
    mode: PaddingMode = "replicate"
    size: int = _num(128, ge=32)  # >= 101 except for resize; a multiple of 32 (the encoders' deepest stride)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (0 disables) and parameters of the training augmentations."""

    hflip: float = _prob(0.5)
    invert: float = _prob(0.5)
    gamma: float = _prob(0.3)
    gamma_limit: tuple[float, float] = _num((0.8, 1.25), gt=0.0)
    cutout: float = _prob(0.3)
    cutout_holes: int = _num(1, ge=1)
    cutout_size: int = _num(20, ge=1, le=101)
    crop: float = _prob(0.3)
    crop_size: int = _num(88, ge=1, le=101)
    brightness_contrast: float = _prob(0.0)
    brightness_limit: float = _num(0.2, ge=0.0, le=1.0)
    contrast_limit: float = _num(0.2, ge=0.0, le=1.0)
    shift_scale_rotate: float = _prob(0.0)
    shift_limit: float = _num(0.0625, ge=0.0, le=1.0)
    scale_limit: float = _num(0.1, ge=0.0, lt=1.0)
    rotate_limit: float = _num(10.0, ge=0.0, le=180.0)


@dataclass(frozen=True)
class LossConfig:
    """``seg_terms`` maps loss-term names (owned by ``salt_exp.losses``) to weights; treat as read-only."""

    seg_terms: dict[str, float] = field(default_factory=lambda: {"bce": 1.0, "lovasz": 0.5}, metadata={"ge": 0.0})
    cls_weight: float = _num(0.05, ge=0.0)
    seg_weight: float = _num(0.1, ge=0.0)
    fused_weight: float = _num(1.0, ge=0.0)


@dataclass(frozen=True)
class OptimConfig:
    name: OptimName = "sgd"
    lr: float | Literal["auto"] = _num("auto", gt=0.0)  # "auto": take the LR range test's suggestion
    momentum: float = _num(0.9, ge=0.0, lt=1.0)
    weight_decay: float = _num(1e-4, ge=0.0)
    nesterov: bool = False
    batch_size: int = _num(16, ge=1)
    grad_clip: float | None = _num(None, gt=0.0)


@dataclass(frozen=True)
class ScheduleConfig:
    """Cosine cycles with warm restarts. ``min_lr`` is an absolute LR, not a ratio of the max LR."""

    cycles: int = _num(10, ge=1)
    cycle_epochs: int = _num(50, ge=1)
    min_lr: float = _num(1e-4, ge=0.0)
    warmup_epochs: int = _num(0, ge=0)


@dataclass(frozen=True)
class LRFindConfig:
    enabled: bool = True
    start_lr: float = _num(1e-5, gt=0.0)
    end_lr: float = _num(1.0, gt=0.0)
    steps: int = _num(100, ge=2)
    smooth: float = _num(0.98, ge=0.0, lt=1.0)
    diverge: float = _num(4.0, gt=1.0)


@dataclass(frozen=True)
class TrainConfig:
    device: Device = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: int = _num(2, ge=0)
    val_batch_size: int = _num(32, ge=1)
    max_train_batches: int | None = _num(None, ge=1)  # cap per epoch, for tests and smoke runs


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "adhoc"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    padding: PaddingConfig = field(default_factory=PaddingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------- YAML parsing (1e-4 is a float)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (PyYAML's YAML 1.1 rules read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SaltError(f"{where}: invalid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None


# ---------------------------------------------------------------- schema-driven validation


class _Mismatch(Exception):
    pass


def _fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} {_describe(args[0])}"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` to ``tp`` or raise _Mismatch.

    Lists become tuples; ints are accepted as floats; lists and mappings must not be empty.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg)
                except _Mismatch:
                    pass
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise _Mismatch
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and len(value) != len(args):
            raise _Mismatch
        item_types = [args[0]] * len(value) if variadic else list(args)
        return tuple(_coerce(v, a) for v, a in zip(value, item_types, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping) or not value:
            raise _Mismatch
        return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise _Mismatch


def _numbers(value: Any) -> list[float]:
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return _numbers(list(value.values()))
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _check_bounds(value: Any, bounds: Mapping[str, float], key: str, where: str) -> None:
    tests = {
        "ge": (lambda x, b: x >= b, ">="),
        "gt": (lambda x, b: x > b, ">"),
        "le": (lambda x, b: x <= b, "<="),
        "lt": (lambda x, b: x < b, "<"),
    }
    for x in _numbers(value):
        for name, bound in bounds.items():
            if math.isnan(x) or not tests[name][0](x, bound):
                rule = " and ".join(f"{tests[n][1]} {b}" for n, b in bounds.items())
                raise SaltError(f"{where}: '{key}' must be {rule}, got {value!r}")


def _convert_field(value: Any, tp: Any, fld: dataclasses.Field[Any], key: str, where: str) -> Any:
    try:
        out = _coerce(value, tp)
    except _Mismatch:
        raise SaltError(f"{where}: '{key}' expects {_describe(tp)}, got {value!r}") from None
    _check_bounds(out, fld.metadata, key, where)
    return out


def _unknown(key: str, prefix: str, cls: type, where: str) -> SaltError:
    valid = list(_fields(cls)) + (["extends"] if cls is ExperimentConfig else [])
    scope = f"in '{prefix.rstrip('.')}'" if prefix else "at top level"
    return SaltError(f"{where}: unknown key '{prefix}{key}'; valid keys {scope}: {', '.join(valid)}")


def _check_section(raw: Any, cls: type, prefix: str, where: str) -> dict[str, Any]:
    """Validate the keys present in ``raw`` against ``cls``; return them converted (sections as dicts)."""
    if not isinstance(raw, Mapping):
        name = prefix.rstrip(".") or "the config"
        raise SaltError(f"{where}: '{name}' must be a mapping with keys {', '.join(_fields(cls))}, got {raw!r}")
    schema, out = _fields(cls), {}
    for key, value in raw.items():
        if key not in schema:
            raise _unknown(str(key), prefix, cls, where)
        tp, fld = schema[key]
        if _is_section(tp):
            out[key] = _check_section(value, tp, f"{prefix}{key}.", where)
        else:
            out[key] = _convert_field(value, tp, fld, f"{prefix}{key}", where)
    return out


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """Deep-merge checked dicts: sections merge key by key, every other value (lists, dicts) is replaced."""
    schema, out = _fields(cls), dict(base)
    for key, value in over.items():
        tp = schema[key][0]
        out[key] = _merge(out.get(key, {}), value, tp) if _is_section(tp) else value
    return out


def _build(cls: type, checked: Mapping[str, Any]) -> Any:
    kwargs = {}
    for key, (tp, _) in _fields(cls).items():
        if key in checked:
            kwargs[key] = _build(tp, checked[key]) if _is_section(tp) else copy.deepcopy(checked[key])
    return cls(**kwargs)


def _check_consistency(cfg: ExperimentConfig, where: str) -> None:
    """Rules that involve more than one field."""
    if cfg.optim.lr == "auto" and not cfg.lr_find.enabled:
        raise SaltError(f"{where}: optim.lr is 'auto' but lr_find.enabled is false; set optim.lr to a number")
    if cfg.padding.size % 32 or (cfg.padding.mode != "resize" and cfg.padding.size < 101):
        raise SaltError(f"{where}: padding.size must be a multiple of 32 and >= 101 unless padding.mode is resize, "
                        f"got {cfg.padding.size} with mode {cfg.padding.mode}")
    if cfg.lr_find.start_lr >= cfg.lr_find.end_lr:
        raise SaltError(f"{where}: lr_find.start_lr ({cfg.lr_find.start_lr}) must be < end_lr ({cfg.lr_find.end_lr})")
    if cfg.schedule.warmup_epochs >= cfg.schedule.cycle_epochs:
        raise SaltError(
            f"{where}: schedule.warmup_epochs must be < schedule.cycle_epochs ({cfg.schedule.cycle_epochs})"
        )
    low, high = cfg.augment.gamma_limit
    if low > high:
        raise SaltError(f"{where}: augment.gamma_limit must be [low, high] with low <= high, got {[low, high]}")


# ---------------------------------------------------------------- files and overrides


def _load_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        raise SaltError(f"config 'extends' cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    if not path.is_file():
        via = f" (extended from {chain[-1]})" if chain else ""
        raise SaltError(f"config file not found: {path}{via}")
    raw = _parse_yaml(path.read_text(encoding="utf-8"), str(path))
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise SaltError(f"{path}: a config file must be a mapping of keys, got {type(raw).__name__}")
    raw = dict(raw)
    parent = raw.pop("extends", None)
    checked = _check_section(raw, ExperimentConfig, "", str(path))
    if parent is None:
        return checked
    if not isinstance(parent, str):
        raise SaltError(f"{path}: 'extends' expects a file path (str), got {parent!r}")
    return _merge(_load_file(path.parent / parent, (*chain, path)), checked, ExperimentConfig)


def _set_dotted(checked: dict[str, Any], text: str) -> None:
    """Apply one ``a.b.c=value`` override to a checked dict, in place."""
    where = f"override {text!r}"
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SaltError(f"{where}: expected 'key.sub=value'")
    value = _parse_yaml(value_text, where)
    parts, cls, node = key.split("."), ExperimentConfig, checked
    for i, part in enumerate(parts):
        schema = _fields(cls)
        prefix = ".".join(parts[:i]) + "." if i else ""
        if part not in schema:
            raise _unknown(part, prefix, cls, where)
        tp, fld = schema[part]
        rest = parts[i + 1 :]
        if _is_section(tp) and rest:
            node, cls = node.setdefault(part, {}), tp
            continue
        if _is_section(tp):
            node[part] = _merge(node.get(part, {}), _check_section(value, tp, f"{key}.", where), tp)
        elif typing.get_origin(tp) is dict and len(rest) == 1:  # loss.seg_terms.lovasz=1.0 sets one entry
            current = node.get(part, fld.default_factory() if callable(fld.default_factory) else {})
            node[part] = _convert_field({**current, rest[0]: value}, tp, fld, f"{prefix}{part}", where)
        elif rest:
            raise SaltError(f"{where}: '{prefix}{part}' is a value ({_describe(tp)}), not a section")
        else:  # a plain str field takes the text as written: name=2024, name=yes
            text_value = value_text.strip() if tp is str and not isinstance(value, str) else value
            node[part] = _convert_field(text_value, tp, fld, key, where)
        return


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load ``path`` (following ``extends:``), apply ``key.sub=value`` overrides, validate, return the config."""
    if isinstance(overrides, str):
        overrides = [overrides]
    checked = _load_file(Path(path), ())
    for text in overrides:
        _set_dotted(checked, text)
    cfg = _build(ExperimentConfig, checked)
    _check_consistency(cfg, str(path))
    return cfg


def apply_overrides(cfg: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """Return ``cfg`` with ``key.sub=value`` overrides applied and validated (e.g. Optuna trial params)."""
    checked = _check_section(to_dict(cfg), ExperimentConfig, "", "config")
    for text in overrides:
        _set_dotted(checked, text)
    out = _build(ExperimentConfig, checked)
    _check_consistency(out, "overrides")
    return out


def config_from_dict(raw: Mapping[str, Any], where: str = "config") -> ExperimentConfig:
    """Rebuild and validate a config from ``to_dict`` output (e.g. the one stored in a snapshot)."""
    cfg = _build(ExperimentConfig, _check_section(dict(raw), ExperimentConfig, "", where))
    _check_consistency(cfg, where)
    return cfg


# ---------------------------------------------------------------- export


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain nested dict of the config (tuples as lists): JSON- and YAML-safe."""
    return _plain(cfg)


def _text(value: Any) -> str:
    """YAML flow text of a value, parseable back by an override (``key=<text>``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_text(k)}: {_text(v)}" for k, v in value.items()) + "}"
    text = str(value)
    plain_ok = text and text == text.strip() and not re.search(r"[:#,\[\]{}&*!|>'\"%@`]", text)
    return text if plain_ok and _parse_yaml(text, "value") == text else json.dumps(text)


def flatten(cfg: ExperimentConfig) -> dict[str, str]:
    """Dotted keys to YAML-text values (for MLflow params).

    Each item replays as an override: ``load_config(base, [f"{k}={v}" for k, v in flatten(cfg).items()])``.
    """
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = _text(_plain(value))

    walk(cfg, "")
    return out


def dump_yaml(cfg: ExperimentConfig) -> str:
    """The full config as YAML; ``load_config`` of the written file gives back an equal config."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


class _Dumper(yaml.SafeDumper):
    """Block-style sections with flow-style lists (``decoder_channels: [256, 128, ...]``)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def config_hash(cfg: ExperimentConfig, length: int = 12) -> str:
    """Stable short hash of what the experiment runs: every field except the ``name`` label."""
    payload = to_dict(cfg)
    payload.pop("name", None)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
