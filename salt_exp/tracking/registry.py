"""Registry reads and aliases, returning the contract's version records."""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException

from salt_exp.contract import EnsembleVersion, RegistryVersion, SnapshotVersion
from salt_exp.tracking.store import client


def version_model_id(v: Any) -> str:
    """The logged model a version was created from: its ``models:/<model_id>`` source (the SQLite registry does
    not keep ``model_id`` itself), "" for a version of a plain artifact folder."""
    source = str(v.source or "")
    return getattr(v, "model_id", None) or (source.removeprefix("models:/") if source.startswith("models:/m-") else "")


def _record(model_name: str, v: Any) -> RegistryVersion:
    return RegistryVersion(name=model_name, version=str(v.version), run_id=v.run_id, source=v.source,
                           tags=dict(v.tags), created_ms=int(v.creation_timestamp or 0),
                           model_id=version_model_id(v))


def registry_versions(model_name: str) -> list[RegistryVersion]:
    """Every version of a registered model; [] when the model is absent."""
    try:
        found = client().search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return []
    return [_record(model_name, v) for v in found]


def snapshot_versions(model_name: str) -> list[SnapshotVersion]:
    """The versions of ``model_name`` that are cycle snapshots (others, e.g. incomplete tags, are skipped)."""
    found = (SnapshotVersion.from_version(v) for v in registry_versions(model_name))
    return [s for s in found if s is not None]


def ensemble_versions(model_name: str) -> list[EnsembleVersion]:
    found = (EnsembleVersion.from_version(v) for v in registry_versions(model_name))
    return [e for e in found if e is not None]


def set_model_alias(model_name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(model_name, alias, version)


def alias_version(model_name: str, alias: str) -> RegistryVersion | None:
    """The version ``alias`` points at, or None when the model or the alias is absent."""
    try:
        v = client().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return _record(model_name, v)
