"""Test-set prediction of registered snapshots with horizontal-flip TTA, batched (GPU when present)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from salt_exp.config import config_from_dict
from salt_exp.data.dataset import TileDataset, make_loader
from salt_exp.data.kaggle import TileSet
from salt_exp.ensemble.select import Member
from salt_exp.errors import SaltError
from salt_exp.tracking import fetch_artifact
from salt_exp.train.engine import choose_runtime, predict
from salt_exp.train.precision import resolve_device
from salt_exp.train.setup import build_parts


def load_member(member: Member, cache: Path) -> tuple[torch.nn.Module, object, object]:
    """(model in eval mode, tile adapter, config) of one registered snapshot, read with ``weights_only=True``
    (tensors and plain metadata only: nothing from the artifact store is unpickled as code)."""
    path = fetch_artifact(member.run_id, member.weights, cache)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a tampered, truncated or non-tensor file: one line
        raise SaltError(f"{member.key}: {member.weights} of run {member.run_id} is not a plain state_dict checkpoint "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise SaltError(f"{member.key}: {member.weights} of run {member.run_id} lacks its state_dict or config")
    cfg = config_from_dict(payload["config"], where=f"{member.key} config")
    model, adapter, _ = build_parts(cfg)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), adapter, cfg


def predict_member(member: Member, tiles: TileSet, cache: Path, device: str = "auto") -> np.ndarray:
    """(N, 101, 101) float32 probabilities of one snapshot on ``tiles``, averaged with the h-flipped view."""
    model, adapter, cfg = load_member(member, cache)
    t = cfg.train
    ds = TileDataset(tiles.images, None, tiles.depths, cfg.data.channels)
    cuda = resolve_device(device).type == "cuda"
    loader = make_loader(ds, t.val_batch_size, False, 0, seed=cfg.seed, pin_memory=cuda)
    # the snapshot's own precision rule (auto: a prediction pass timed in fp32 and bf16, cached per CPU and model)
    batch = next(iter(loader)) if "auto" in (t.precision, t.channels_last, t.threads) else None
    rt, _ = choose_runtime(model, adapter, device=device, precision=t.precision, channels_last=t.channels_last,
                           amp=t.amp, batch=batch, hflip_tta=True, requested_threads=t.threads)
    probs, _ = predict(model, adapter, loader, rt, hflip_tta=True)
    return probs


def predict_test(selection: Mapping[int, Sequence[Member]], tiles: TileSet, cache: Path,
                 device: str = "auto") -> np.ndarray:
    """Mean over the snapshots of each fold, then over folds (and so over pipelines): (N, 101, 101) float32."""
    per_fold = []
    for members in selection.values():
        per_fold.append(np.mean([predict_member(m, tiles, cache, device) for m in members], axis=0))
    return np.mean(per_fold, axis=0).astype(np.float32)
