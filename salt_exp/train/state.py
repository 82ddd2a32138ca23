"""What a fold run persists between epochs, so that a killed run resumes where it stopped.

Files live in the run's work folder (``salt_exp.stores.work_root() / <run_id>``): ``last.pt`` (the training
state after the last completed epoch) and ``cycle<c>_epoch<e>.pt`` / ``.oof.npy`` (the best
snapshot of a cycle so far and its out-of-fold probabilities). Every write is atomic.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_exp.errors import SaltError
from salt_exp.io import atomic_path


@dataclass(kw_only=True)
class SnapshotRef:
    """The best epoch of one cycle so far, and where its weights and OOF probabilities are."""

    cycle: int
    epoch: int
    val_map: float
    val_best_thr: float
    val_map_best_thr: float
    weights: str
    oof: str
    bins: list[dict] = field(default_factory=list)


@dataclass(kw_only=True)
class BudgetPlan:
    """A time-budgeted run's schedule (fixed once planned, so a resumed run keeps it) and its clock.

    ``used_s`` is the wall time charged so far, accumulated across resumes; ``epoch_wall_s`` the measured
    wall time of each epoch (training, validation, saving, logging) that re-estimates the next one.
    """

    budget_minutes: float
    cycles: int
    cycle_epochs: int
    steps_per_epoch: int  # a full pass over the fold's training tiles
    step_s: float  # measured seconds per training step on the first batches
    val_s: float  # estimated seconds of one validation pass
    used_s: float = 0.0
    epoch_wall_s: list[float] = field(default_factory=list)
    epoch_batches: list[int] = field(default_factory=list)  # training batches of each measured epoch
    stopped: bool = False  # training stopped before the plan's end because the budget ran out
    note: str = ""
    epoch_steps: int = 0  # training batches per planned epoch; 0 (plans saved before it existed): a full pass

    @property
    def batches(self) -> int:
        """Training batches per planned epoch."""
        return self.epoch_steps or self.steps_per_epoch

    @property
    def rate_s(self) -> float:
        """Wall seconds per training batch: the last (up to 3) measured epochs less their validation (so
        their loading, saving and logging count), else the first batches' timing."""
        walls, batches = self.epoch_wall_s[-3:], self.epoch_batches[-3:]
        if not walls or len(walls) != len(batches) or sum(batches) == 0:
            return self.step_s
        return max(sum(walls) - len(walls) * self.val_s, 0.0) / sum(batches)

    @property
    def epoch_s(self) -> float:
        """Estimated wall time of the next epoch at its planned length."""
        return self.batches * self.rate_s + self.val_s

    @property
    def planned_steps(self) -> int:
        """Batches of the measured epochs plus those planned for the rest."""
        return sum(self.epoch_batches) + max(self.epochs - len(self.epoch_batches), 0) * self.batches

    @property
    def budget_s(self) -> float:
        return 60.0 * self.budget_minutes

    @property
    def epochs(self) -> int:
        return self.cycles * self.cycle_epochs


@dataclass
class RunState:
    epochs_done: int = 0
    step: int = 0
    max_lr: float | None = None
    lr_find: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics dict per epoch
    best: dict[int, SnapshotRef] = field(default_factory=dict)  # cycle -> best snapshot so far
    published: list[int] = field(default_factory=list)  # cycles whose snapshot was logged + registered
    budget: BudgetPlan | None = None  # schedule.budget_minutes runs only


CHECKPOINT_FORMAT = 2  # 2: weights-only payload (tensors and plain metadata) with the writer's config hash and commit


@dataclass(frozen=True)
class CheckpointIdentity:
    """Who wrote a resume checkpoint: the run's config hash (another config's checkpoint is refused) and git commit
    (another commit's is used, with a warning)."""

    config_hash: str
    commit: str


def _numpy_rng() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng(saved: Any) -> None:
    if isinstance(saved, dict):
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state((saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))
    else:  # a format-1 checkpoint: numpy's own tuple
        np.random.set_state(saved)


def save_state(path: Path, state: RunState, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, identity: CheckpointIdentity | None = None) -> None:
    """``last.pt``: plain tensors and metadata only, so that it loads with ``weights_only=True`` (a checkpoint
    downloaded from a store runs no pickled code)."""
    payload = {
        "format": CHECKPOINT_FORMAT, "identity": asdict(identity) if identity else None,
        "state": {**asdict(state), "best": {c: asdict(s) for c, s in state.best.items()}},
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_rng(),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename: a power cut must not leave an empty last.pt


def unreadable_state(path: Path, exc: BaseException, what: str = "cannot be read") -> SaltError:
    """The one line a rerun stops with when ``last.pt`` is corrupt (truncated, overwritten, another model's): what to
    do is move it aside, after which the same command retrains the fold from epoch 0 in the same run."""
    reason = " ".join(str(exc).split()).split(". ")[0][:160] or "no message"  # torch's first sentence says it
    return SaltError(f"{path}: this fold run's resume checkpoint {what} ({type(exc).__name__}: {reason}); move it "
                     f"aside (mv {path} {path}.bad) and rerun the same command: the fold retrains from epoch 0 in the "
                     "same run, keeping what it logged and registered")


def _read_payload(path: Path) -> dict:
    """``torch.load(weights_only=True)``; a format-1 checkpoint (numpy's RNG tuple inside) with numpy's array
    types allowed as well, and nothing else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "numpy" not in str(exc):
            raise
    core = np._core if hasattr(np, "_core") else np.core  # noqa: SLF001 - numpy 2 renamed it
    legacy = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), core.multiarray._reconstruct]  # noqa: SLF001
    with torch.serialization.safe_globals(legacy):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_identity(path: Path) -> tuple[int, CheckpointIdentity | None]:
    """(epochs done, writer) of a resume checkpoint, without applying it; SaltError when it cannot be read."""
    try:
        payload = _read_payload(path)
        ident = payload.get("identity")
        return int(payload["state"]["epochs_done"]), CheckpointIdentity(**ident) if ident else None
    except Exception as exc:  # noqa: BLE001 - any failure to read means "cannot be read"
        raise unreadable_state(path, exc) from exc


def check_identity(path: Path, found: CheckpointIdentity | None, expected: CheckpointIdentity | None) -> str:
    """SaltError when ``path`` was written by another config; a warning (returned, "" when none) when by another
    commit. Checkpoints written before identities were recorded pass."""
    if found is None or expected is None:
        return ""
    if found.config_hash != expected.config_hash:
        raise SaltError(f"{path}: this resume checkpoint was written by config {found.config_hash}, this run's config "
                        f"is {expected.config_hash}: it cannot continue this run; move it aside (mv {path} "
                        f"{path}.bad) and rerun: the fold retrains from epoch 0 in the same run")
    if found.commit != expected.commit:
        return (f"resume checkpoint {path.name} was written at commit {found.commit}, this process runs "
                f"{expected.commit}: continued anyway (same config); results may differ from an uninterrupted run")
    return ""


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, *, identity: CheckpointIdentity | None = None) -> tuple[RunState, str]:
    """The training state saved by :func:`save_state`, applied to ``model``, ``optimizer``, ``scaler`` and the RNGs,
    and the warning of :func:`check_identity` ("" when none). Snapshot files are looked for beside ``path`` (a
    checkpoint downloaded to another machine's work folder). :func:`unreadable_state` (a SaltError) when the file is
    corrupt or does not fit the run's model; a SaltError when another config wrote it."""
    try:
        payload = _read_payload(path)
        raw = payload["state"]
        raw["best"] = {int(c): SnapshotRef(**s) for c, s in raw["best"].items()}
        raw["budget"] = BudgetPlan(**raw["budget"]) if raw.get("budget") else None
        state = RunState(**raw)
        parts = payload["model"], payload["optimizer"], payload["scaler"], payload["torch_rng"], payload["numpy_rng"]
        found = CheckpointIdentity(**payload["identity"]) if payload.get("identity") else None
    except Exception as exc:  # noqa: BLE001 - zip, pickle, EOF, missing keys: any of them means "cannot be read"
        raise unreadable_state(path, exc) from exc
    warning = check_identity(path, found, identity)
    for ref in state.best.values():  # files of the folder the checkpoint is in, wherever it was written
        ref.weights = str(path.parent / Path(ref.weights).name) if ref.weights else ""
        ref.oof = str(path.parent / Path(ref.oof).name) if ref.oof else ""
    try:
        model.load_state_dict(parts[0])
        optimizer.load_state_dict(parts[1])
        scaler.load_state_dict(parts[2])
        torch.set_rng_state(parts[3])
        _set_numpy_rng(parts[4])
    except Exception as exc:  # noqa: BLE001 - shapes or types that are not this run's
        raise unreadable_state(path, exc, "does not fit this run's model") from exc
    return state, warning


def travelling_files(folder: Path, state: RunState) -> list[Path]:
    """What another machine needs to continue the run from ``folder``'s ``last.pt``: the checkpoint, the run's
    precision choice, and the snapshot files of cycles not yet published (published ones are in the store)."""
    names = ["last.pt", "precision.json"]
    for cycle, ref in sorted(state.best.items()):
        if cycle not in state.published:
            names += [Path(p).name for p in (ref.weights, ref.oof) if p]
    return [folder / n for n in names if (folder / n).is_file()]


def save_snapshot(folder: Path, *, cycle: int, epoch: int, model: torch.nn.Module, meta: dict[str, Any],
                  oof: np.ndarray | None) -> tuple[str, str]:
    """Weights (+ meta, e.g. the config) and float16 OOF probabilities of one epoch; returns both paths
    (the second empty when ``oof`` is None: a full-data fit validates nothing)."""
    weights, probs = folder / f"cycle{cycle}_epoch{epoch}.pt", folder / f"cycle{cycle}_epoch{epoch}.oof.npy"
    with atomic_path(weights) as tmp:
        torch.save({"state_dict": model.state_dict(), **meta}, tmp)
    if oof is None:
        return str(weights), ""
    with atomic_path(probs) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, oof.astype(np.float16))
    return str(weights), str(probs)


def drop_files(*paths: str) -> None:
    for p in paths:
        if p:
            Path(p).unlink(missing_ok=True)
