"""Snapshot and ensemble predictors over local weight files: what ``salt-exp ensemble`` writes its
submission with and what the registered MLflow models run, so the two cannot drift apart.

No MLflow here. A snapshot predictor reads one checkpoint (``weights_only=True``: tensors and plain
metadata, nothing unpickled as code) and gives h-flip-TTA probabilities; an ensemble predictor
averages its members per fold group, then over the groups, thresholds, and applies the mosaic rules
with the labelled tiles it was built with as the test tiles' neighbours.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from salt_exp.errors import SaltError

if TYPE_CHECKING:
    from salt_exp.data.context import TileContext

Progress = Callable[[int], None] | None  # called with the number of tiles of each finished batch

SPEC_FILE, KNOWN_FILE, MOSAICS_FILE = "ensemble.json", "known_tiles.npz", "mosaics.csv"


def load_checkpoint(path: str | Path, label: str) -> tuple[Any, Any, Any]:
    """(model in eval mode, tile adapter, config) of one snapshot file; SaltError in one line for a tampered,
    truncated or non-tensor file. ``label`` names the snapshot in messages. The encoder is built without
    pretrained weights (the checkpoint replaces them), so a snapshot trained from ImageNet loads offline."""
    import torch

    from salt_exp.config import config_from_dict
    from salt_exp.train.setup import build_parts

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a tampered, truncated or non-tensor file: one line
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise SaltError(f"{label} is not a plain state_dict checkpoint ({type(exc).__name__}: {first})") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise SaltError(f"{label} lacks its state_dict or config")
    cfg = config_from_dict(payload["config"], where=f"{label} config")
    model, adapter, _ = build_parts(replace(cfg, model=replace(cfg.model, weights="none")))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise SaltError(f"{label}: its state_dict does not fit its own config ({str(exc).splitlines()[0][:160]})") from exc
    return model.eval(), adapter, cfg


def _counted(batches: Iterable[dict], progress: Progress) -> Iterator[dict]:
    for batch in batches:
        yield batch
        if progress is not None:
            progress(len(batch["image"]))


class SnapshotPredictor:
    """One snapshot's salt probabilities (h-flip TTA), its own precision rule and batch size.

    ``keep_loaded``: hold the network between calls (a served model) instead of rebuilding it per call
    (an ensemble build, which goes through its members one at a time)."""

    def __init__(self, path: str | Path, label: str, *, device: str = "auto", keep_loaded: bool = False) -> None:
        self.path, self.label, self.device, self.keep_loaded = Path(path), label, device, keep_loaded
        self._parts: tuple[Any, Any, Any] | None = None

    def parts(self) -> tuple[Any, Any, Any]:
        parts = self._parts or load_checkpoint(self.path, self.label)
        if self.keep_loaded:
            self._parts = parts
        return parts

    def probs(self, images: np.ndarray, depths: np.ndarray | None = None, progress: Progress = None,
              context: TileContext | None = None) -> np.ndarray:
        """(N, 101, 101) float32 probabilities of uint8 ``images``, averaged with the h-flipped view. ``context``:
        the tiles' ids and neighbour images, read by a context model (``context.mode`` image) and ignored by others."""
        from salt_exp.data.context import model_inputs
        from salt_exp.data.dataset import TileDataset, make_loader
        from salt_exp.train.engine import choose_runtime, predict
        from salt_exp.train.precision import resolve_device

        model, adapter, cfg = self.parts()
        t = cfg.train
        if cfg.data.channels == "depth" and (depths is None or np.isnan(depths).any()):
            raise SaltError(f"{self.label}: the model reads a depth plane (data.channels=depth); pass every tile's depth "
                            "(params.depths, or --data DIR with depths.csv)")
        if cfg.data.channels == "coord" and depths is None:
            depths = np.zeros(len(images), np.float32)  # the coord plane does not read depths
        inputs, validity = model_inputs(cfg, images, context)
        ds = TileDataset(inputs, None, depths, cfg.data.channels, validity=validity, validity_plane=cfg.context.validity)
        cuda = resolve_device(self.device).type == "cuda"
        loader = make_loader(ds, t.val_batch_size, False, 0, seed=cfg.seed, pin_memory=cuda)
        # the snapshot's own precision rule (auto: a prediction pass timed in fp32 and bf16, cached per CPU and model)
        batch = next(iter(loader)) if "auto" in (t.precision, t.channels_last, t.threads) else None
        rt, _ = choose_runtime(model, adapter, device=self.device, precision=t.precision, channels_last=t.channels_last,
                               amp=t.amp, batch=batch, hflip_tta=True, requested_threads=t.threads)
        probs, _ = predict(model, adapter, _counted(loader, progress), rt, hflip_tta=True)
        return probs


@dataclass(frozen=True)
class KnownTiles:
    """Labelled tiles that sit in a mosaic: the test tiles' neighbours for the rules (their masks), and
    whether each is blank. Only mosaic tiles are kept: the rules never read a tile outside a mosaic. The
    ``blank`` rule looks at a tile's own image only, so a blank flag stands in for the image."""

    ids: np.ndarray  # (K,) str
    masks: np.ndarray  # (K, 101, 101) uint8 0/1
    blank: np.ndarray  # (K,) bool

    @classmethod
    def from_tiles(cls, ids: np.ndarray, masks: np.ndarray, blank: np.ndarray, frame: pd.DataFrame | None) -> KnownTiles:
        keep = np.isin(np.asarray(ids).astype(str), frame["id"].astype(str).to_numpy()) if frame is not None else np.zeros(len(ids), bool)
        return cls(np.asarray(ids).astype(str)[keep], masks[keep].astype(np.uint8), np.asarray(blank)[keep])

    def images(self) -> np.ndarray:
        """Stand-in images: constant for blank tiles, non-constant otherwise (all ``blank_images`` reads)."""
        out = np.zeros((len(self.ids), 101, 101), np.uint8)
        out[~self.blank] = np.arange(101, dtype=np.uint8)[None, None, :]
        return out

    def save(self, path: Path) -> Path:
        np.savez_compressed(path, ids=self.ids, masks=np.packbits(self.masks.astype(bool), axis=-1), blank=self.blank)
        return path

    @classmethod
    def load(cls, path: Path) -> KnownTiles:
        with np.load(path, allow_pickle=False) as z:
            masks = np.unpackbits(z["masks"], axis=-1, count=101).astype(np.uint8)
            return cls(z["ids"].astype(str), masks, z["blank"].astype(bool))


Position = tuple[int, int, int] | None  # (mosaic_id, x, y) of a tile; None: the stored position, if any


def call_context(images: np.ndarray, ids: Sequence[str], frame: pd.DataFrame | None) -> TileContext:
    """A prediction call's own tiles as one another's context neighbours, placed by ``frame``. (The labelled tiles
    an ensemble carries hold stand-in images, :meth:`KnownTiles.images`, so they cannot serve.)"""
    from salt_exp.data.context import ContextPool, TileContext

    ids = [str(i) for i in ids]
    return TileContext(ContextPool(ids, np.asarray(images, np.uint8), frame), ids)


def mosaic_frame(stored: pd.DataFrame | None, ids: Sequence[str] | None,
                 positions: Sequence[Position] | None) -> pd.DataFrame | None:
    """The mosaic table the rules use: the stored one, with the caller's positions (mosaic_id, x, y) of
    ``ids`` replacing or extending its rows (a negative mosaic_id: that tile is in no mosaic; None: keep the
    stored row). Row order is kept (the first tile listed owns a shared position)."""
    if positions is None or ids is None:
        return stored
    frame = stored.copy() if stored is not None else pd.DataFrame({"id": [], "x": [], "y": [], "mosaic_id": []})
    frame["id"] = frame["id"].astype(str)
    given = {str(i): p for i, p in zip(ids, positions, strict=True) if p is not None}
    drop = {i for i, (m, _, _) in given.items() if m < 0}
    frame = frame[~frame["id"].isin(drop)].reset_index(drop=True)
    row = {i: k for k, i in enumerate(frame["id"])}
    new = []
    for i, (m, x, y) in given.items():
        if m < 0:
            continue
        if i in row:
            frame.loc[row[i], ["mosaic_id", "x", "y"]] = [m, x, y]
        else:
            new.append({"id": i, "x": x, "y": y, "mosaic_id": m})
    if new:
        frame = pd.concat([frame, pd.DataFrame(new)], ignore_index=True)
    return frame.astype({"x": np.int64, "y": np.int64, "mosaic_id": np.int64})


class EnsemblePredictor:
    """Members grouped by fold (a full-data fit is a group of its own): mean within a group, then over the
    groups; masks at ``threshold``; then ``rules`` over the mosaics, with ``known`` as the neighbours."""

    def __init__(self, groups: Sequence[Sequence[SnapshotPredictor]], *, threshold: float, rules: Sequence[str] = (),
                 known: KnownTiles | None = None, mosaics: pd.DataFrame | None = None,
                 labels: Sequence[Sequence[str]] = (), fold_thresholds: dict[str, float] | None = None,
                 broken: Iterable[Sequence[str]] = ()) -> None:
        if not groups or not all(groups):
            raise SaltError("an ensemble needs at least one member in every group")
        self.groups = [list(g) for g in groups]
        self.threshold, self.rules = float(threshold), tuple(rules)
        self.known, self.mosaics = known, mosaics
        self.labels = [list(g) for g in labels] or [[m.label for m in g] for g in self.groups]
        self.fold_thresholds = {str(k): float(v) for k, v in (fold_thresholds or {}).items()}  # each fold's OOF threshold (``threshold``: their mean)
        self.broken = frozenset((str(a), str(b)) for a, b in broken)  # vertical links the jigsaw seam check cut

    @property
    def members(self) -> list[SnapshotPredictor]:
        return [m for g in self.groups for m in g]

    def probs(self, images: np.ndarray, depths: np.ndarray | None = None, progress: Progress = None,
              context: TileContext | None = None) -> np.ndarray:
        """(N, 101, 101) float32: mean over each group's members, then over the groups (``context``: as for
        :meth:`SnapshotPredictor.probs`)."""
        per_group = [np.mean([m.probs(images, depths, progress, context) for m in g], axis=0) for g in self.groups]
        return np.mean(per_group, axis=0).astype(np.float32)

    def masks_from_probs(self, probs: np.ndarray, images: np.ndarray, ids: Sequence[str] | None = None,
                         positions: Sequence[Position] | None = None) -> np.ndarray:
        """(N, 101, 101) uint8 0/1: thresholded, then the rules (none when the ensemble was built without mosaics)."""
        pred = (probs > self.threshold).astype(np.uint8)
        frame = mosaic_frame(self.mosaics, ids, positions)
        if not self.rules or frame is None:
            return pred
        from salt_exp.ensemble.mosaic import MosaicIndex
        from salt_exp.ensemble.postprocess import Neighbours, apply_rules

        ids = [str(i) for i in ids] if ids is not None else [f"\0tile{k}" for k in range(len(pred))]
        if len(set(ids)) != len(ids):
            raise SaltError("params.ids: every tile needs its own id (the mosaic rules look tiles up by id)")
        known = self.known
        # the labelled tiles are read as neighbours, never returned; a caller's tile wins over a stored one
        context = Neighbours(known.ids.tolist(), known.masks, known.images()) if known is not None and len(known.ids) else None
        index = MosaicIndex.from_frame(frame)
        return apply_rules(pred, ids, images, index, rules=list(self.rules), context=context, broken=self.broken)

    def predict(self, images: np.ndarray, *, ids: Sequence[str] | None = None, depths: np.ndarray | None = None,
                positions: Sequence[Position] | None = None, probs: bool = False,
                progress: Progress = None, context: TileContext | None = None) -> np.ndarray:
        """Masks (or probabilities) of ``images``. A context member reads ``context``, or else, when the tiles have
        ids, the call's own tiles as one another's neighbours (placed by ``positions`` or the stored mosaics)."""
        if context is None and ids is not None and self._reads_context():
            context = call_context(images, ids, mosaic_frame(self.mosaics, ids, positions))
        p = self.probs(images, depths, progress, context)
        return p if probs else self.masks_from_probs(p, images, ids, positions)

    def _reads_context(self) -> bool:
        return any(m.parts()[2].context.mode != "none" for m in self.members)

    # ------------------------------------------------------------ files (what the registered model stores)

    def spec(self, member_files: Sequence[Sequence[str]]) -> dict[str, Any]:
        return {"format": 1, "threshold": self.threshold, "fold_thresholds": self.fold_thresholds,
                "rules": list(self.rules), "tta": "hflip", "broken_seams": sorted(map(list, self.broken)),
                "groups": [[{"file": f, "label": lab} for f, lab in zip(files, labels, strict=True)]
                           for files, labels in zip(member_files, self.labels, strict=True)]}

    def save_context(self, folder: Path, member_files: Sequence[Sequence[str]]) -> list[Path]:
        """``ensemble.json`` (groups of member files, threshold, rules) and, with mosaics, the known tiles and
        the mosaic table; returns the files written."""
        out = [folder / SPEC_FILE]
        out[0].write_text(json.dumps(self.spec(member_files), indent=2))
        if self.mosaics is not None:
            self.mosaics.to_csv(folder / MOSAICS_FILE, index=False)
            out.append(folder / MOSAICS_FILE)
            if self.known is not None:
                out.append(self.known.save(folder / KNOWN_FILE))
        return out

    @classmethod
    def from_context(cls, spec_path: Path, files: dict[str, Path], *, known: Path | None, mosaics: Path | None,
                     device: str = "auto", keep_loaded: bool = True) -> EnsemblePredictor:
        spec = json.loads(Path(spec_path).read_text())
        if spec.get("format") != 1:
            raise SaltError(f"{spec_path}: unknown ensemble format {spec.get('format')!r} (a newer salt-exp wrote it)")
        groups = [[SnapshotPredictor(files[m["file"]], m["label"], device=device, keep_loaded=keep_loaded) for m in g]
                  for g in spec["groups"]]
        frame = pd.read_csv(mosaics, dtype={"id": str}) if mosaics is not None and Path(mosaics).exists() else None
        kt = KnownTiles.load(known) if known is not None and Path(known).exists() else None
        return cls(groups, threshold=spec["threshold"], rules=spec["rules"], known=kt, mosaics=frame,
                   labels=[[m["label"] for m in g] for g in spec["groups"]], fold_thresholds=spec.get("fold_thresholds"),
                   broken=spec.get("broken_seams", ()))
