"""Registered snapshots as local predictors: their weights fetched from the store (the snapshot's logged model,
or the run's artifacts for versions registered before logged models), read with ``weights_only=True``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from salt_exp.ensemble.select import Member
from salt_exp.serving.predictor import SnapshotPredictor, load_checkpoint
from salt_exp.tracking import fetch_artifact


def member_weights(member: Member, cache: Path) -> Path:
    """The local checkpoint file of a registered snapshot, downloaded once into ``cache``."""
    if member.model_id:
        from salt_exp.tracking.models import fetch_model_file

        return fetch_model_file(member.model_id, member.weights, cache)
    return fetch_artifact(member.run_id, member.weights, cache)


def member_label(member: Member) -> str:
    where = f"model {member.model_id}" if member.model_id else f"run {member.run_id}"
    return f"{member.key}: {member.weights} of {where}"


def member_predictor(member: Member, cache: Path, device: str = "auto") -> SnapshotPredictor:
    return SnapshotPredictor(member_weights(member, cache), member_label(member), device=device)


def load_member(member: Member, cache: Path) -> tuple[torch.nn.Module, object, object]:
    """(model in eval mode, tile adapter, config) of one registered snapshot (one-line error when tampered)."""
    return load_checkpoint(member_weights(member, cache), member_label(member))


def group_predictors(selection: Mapping[int, Sequence[Member]], cache: Path,
                     device: str = "auto") -> list[list[SnapshotPredictor]]:
    return [[member_predictor(m, cache, device) for m in members] for members in selection.values()]

