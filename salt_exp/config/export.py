"""A config as plain data: nested dict, dotted MLflow params, YAML text and a stable hash.

:func:`flatten` items replay as overrides and :func:`dump_yaml` output loads back to an equal config;
:func:`config_hash` keys resumable runs, so its payload (every field but ``name``) must not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from typing import TYPE_CHECKING, Any

import yaml

from salt_exp.config.engine import parse_yaml

if TYPE_CHECKING:
    from salt_exp.config.schema import ExperimentConfig


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
    return text if plain_ok and parse_yaml(text, "value") == text else json.dumps(text)


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


# Fields added later, left out of the hash while they say "as before": (section, key, when-absent test).
_HASH_OMIT = (
    ("schedule", "budget_minutes", lambda sec: sec["budget_minutes"] is None),
    ("loss", "late_terms", lambda sec: not sec["late_terms"]),
    ("loss", "late_from_cycle", lambda sec: not sec.get("late_terms")),
    ("pseudo", "ignore_band", lambda sec: not sec["ignore_band"]),
    ("pseudo", "cycles", lambda sec: sec["cycles"] is None),
    ("pseudo", "empty_share", lambda sec: sec["empty_share"] is None),
    ("pseudo", "warm_start", lambda sec: not sec["warm_start"]),
    ("context", "dropout", lambda sec: not sec["dropout"]),
)
# Sections added later, left out of the hash while they change nothing: (section, when-inert test). Without
# pseudo-labels the pseudo section's confidence rules are unused; with them, the labels URI names one label set.
# The sync section says where a resume checkpoint is copied, never what is trained: always left out.
# A context section at its default (mode none) changes nothing either: configs from before it hash as they did.
_HASH_OMIT_SECTIONS = (("pseudo", lambda sec: not sec.get("labels")), ("sync", lambda sec: True),
                       ("context", lambda sec: sec.get("mode", "none") == "none"))


def config_hash(cfg: ExperimentConfig, length: int = 12) -> str:
    """Stable short hash of what the experiment runs: every field except the ``name`` label."""
    payload = to_dict(cfg)
    payload.pop("name", None)
    for section, key, as_before in _HASH_OMIT:
        sec = payload.get(section, {})
        if key in sec and as_before(sec):
            del sec[key]
    for section, inert in _HASH_OMIT_SECTIONS:
        if section in payload and inert(payload[section]):
            del payload[section]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
