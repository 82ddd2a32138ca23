"""Config files (``extends:``) and dotted ``key.sub=value`` overrides, checked into an :class:`ExperimentConfig`.

``load_config("configs/study.yaml", ["optim.lr=auto", "model.decoder_channels=[64,32,16,8,4]"])``
reads the file, follows ``extends:`` (a path relative to the extending file, recursive, deep-merged
section by section, cycles rejected), applies the overrides (values parsed as YAML), builds the config
and checks the rules that involve more than one field.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from salt_exp.config.engine import (
    build,
    check_mapping,
    convert,
    describe,
    fields_of,
    is_section,
    merge,
    parse_yaml,
    unknown_key,
    valid_keys,
)
from salt_exp.config.export import to_dict
from salt_exp.config.schema import ExperimentConfig, check_consistency
from salt_exp.errors import SaltError


def read_yaml_mapping(path: Path, what: str, *, allow_empty: bool = True) -> dict[str, Any]:
    """The YAML file ``path`` (``1e-4`` a float) as a dict, ``{}`` if empty (SaltError unless ``allow_empty``);
    ``what`` names the kind of file."""
    if path.is_dir():
        raise SaltError(f"{path}: is a folder (expected a {what} file, YAML)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SaltError(f"{path}: not a {what} file (expected UTF-8 YAML text, byte {exc.start} is not UTF-8)") \
            from None
    except OSError as exc:
        raise SaltError(f"{path}: unreadable {what} file ({exc.strerror or exc})") from None
    raw = parse_yaml(text, str(path))
    if raw is None and not allow_empty:
        raise SaltError(f"{path}: the {what} file is empty (expected a mapping of keys, e.g. 'extends: base.yaml')")
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise SaltError(f"{path}: a {what} file must be a mapping of keys, got {type(raw).__name__}")
    return dict(raw)


def _load_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    given, path = path, path.resolve()
    if path in chain:
        raise SaltError(f"config 'extends' cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    if not path.exists():
        via = f" (extended from {chain[-1]})" if chain else ""
        link = f" (a broken link to {path})" if given.is_symlink() else ""
        raise SaltError(f"config file not found: {given if link else path}{link}{via}")
    raw = read_yaml_mapping(path, "config", allow_empty=False)
    parent = raw.pop("extends", None)
    checked = check_mapping(raw, ExperimentConfig, str(path))
    if parent is None:
        return checked
    if not isinstance(parent, str):
        raise SaltError(f"{path}: 'extends' expects a file path (str), got {parent!r}")
    return merge(_load_file(path.parent / parent, (*chain, path)), checked, ExperimentConfig)


def _set_dotted(checked: dict[str, Any], text: str) -> None:
    """Apply one ``a.b.c=value`` override to a checked dict, in place."""
    where = f"override {text!r}"
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SaltError(f"{where}: expected 'key.sub=value'")
    value = parse_yaml(value_text, where)
    parts, cls, node = key.split("."), ExperimentConfig, checked
    for i, part in enumerate(parts):
        schema = fields_of(cls)
        prefix = ".".join(parts[:i]) + "." if i else ""
        if part not in schema:
            raise unknown_key(part, prefix, valid_keys(cls), where)
        tp, fld = schema[part]
        rest = parts[i + 1 :]
        if is_section(tp) and rest:
            node, cls = node.setdefault(part, {}), tp
            continue
        if is_section(tp):
            node[part] = merge(node.get(part, {}), check_mapping(value, tp, where, f"{key}."), tp)
        elif _dict_type(tp) is not None and len(rest) == 1:  # loss.seg_terms.lovasz=1.0 sets one entry
            current = node.get(part, fld.default_factory() if callable(fld.default_factory) else None) or {}
            node[part] = convert({**current, rest[0]: value}, tp, f"{prefix}{part}", where, bounds=fld.metadata)
        elif rest:
            raise SaltError(f"{where}: '{prefix}{part}' is a value ({describe(tp)}), not a section")
        else:  # a plain str field takes the text as written: name=2024, name=yes
            text_value = value_text.strip() if tp is str and not isinstance(value, str) else value
            node[part] = convert(text_value, tp, key, where, bounds=fld.metadata)
        return


def _dict_type(tp: object) -> object | None:
    """``dict[K, V]`` of a field typed ``dict[K, V]`` or ``dict[K, V] | None``, else None."""
    if typing.get_origin(tp) is dict:
        return tp
    dicts = [a for a in typing.get_args(tp) if typing.get_origin(a) is dict]
    return dicts[0] if len(dicts) == 1 and all(a is type(None) or a in dicts for a in typing.get_args(tp)) else None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load ``path`` (following ``extends:``), apply ``key.sub=value`` overrides, validate, return the config."""
    if isinstance(overrides, str):
        overrides = [overrides]
    checked = _load_file(Path(path), ())
    for text in overrides:
        _set_dotted(checked, text)
    cfg = build(ExperimentConfig, checked)
    check_consistency(cfg, str(path))
    return cfg


def apply_overrides(cfg: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """Return ``cfg`` with ``key.sub=value`` overrides applied and validated (e.g. Optuna trial params)."""
    checked = check_mapping(to_dict(cfg), ExperimentConfig, "config")
    for text in overrides:
        _set_dotted(checked, text)
    out = build(ExperimentConfig, checked)
    check_consistency(out, "overrides")
    return out


def config_from_dict(raw: Mapping[str, Any], where: str = "config") -> ExperimentConfig:
    """Rebuild and validate a config from ``to_dict`` output (e.g. the one stored in a snapshot)."""
    cfg = build(ExperimentConfig, check_mapping(dict(raw), ExperimentConfig, where))
    check_consistency(cfg, where)
    return cfg
