"""Resume checkpoints that travel: a fold run's ``last.pt`` copied to the run's artifacts, so that another
machine, sharing nothing with this one but the tracking server, continues the run from its last synced epoch.

What travels (``salt_exp.train.state.travelling_files``): ``last.pt`` (model, optimizer, scaler, RNG states, the
epoch and the run's bookkeeping), ``precision.json`` (how the run computes: a run keeps its choice) and the best
snapshot of every cycle not yet published (published ones are in the store already). A sync uploads them to
``resume/e<epochs done>/`` and then sets the run's ``salt.resume.checkpoint`` tag to that folder: the tag is the
commit point (a machine lost during an upload leaves the previous folder in force), and the previous folder is
deleted afterwards. A finished run deletes its last one.

When (``sync`` config section): after an epoch, once ``every_epochs`` epochs or ``every_minutes`` minutes passed
since the last sync, unless the last upload took more than ``max_overhead`` of the wall time since then (so a
slow link or a big model syncs less often instead of slowing training). ``mode: auto`` syncs only when the run's
artifacts are not on this machine's disk (a server's ``mlflow-artifacts:``, object storage): with a local store
the work folder is the same disk.

:func:`restore` is the other end: before a fold run resumes, it downloads the synced checkpoint into the work
folder when that holds none or an older one.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from salt_exp import contract as C
from salt_exp.config.schema import SyncConfig
from salt_exp.contract import Tag
from salt_exp.errors import SaltError, one_line
from salt_exp.tracking import RunTracker
from salt_exp.train.hooks import CheckpointSaved, HookBase, RunEnd
from salt_exp.train.state import read_identity

LAST = "last.pt"


def sync_enabled(cfg: SyncConfig, artifact_uri: str) -> bool:
    """``always``; ``never``; ``auto``: when ``artifact_uri`` is not a path on this machine's disk."""
    if cfg.mode != "auto":
        return cfg.mode == "always"
    return urlsplit(artifact_uri).scheme not in ("", "file")


class CheckpointSync(HookBase):
    """Uploads the resume checkpoint after the epochs its interval picks; logs ``sync_seconds``, ``sync_mb`` and
    ``sync_overhead`` at the epoch it synced (step: the epoch index, like the epoch metrics)."""

    def __init__(self, tracker: RunTracker, cfg: SyncConfig, *, label: str,
                 print_fn: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.tracker, self.cfg, self.label, self.clock = tracker, cfg, label, clock
        self.print = print_fn or (lambda s: print(s, flush=True))
        self.enabled = sync_enabled(cfg, tracker.artifact_uri)
        self.current = tracker.tags().get(Tag.RESUME_CHECKPOINT, "") if self.enabled else ""
        self.synced_steps = set(tracker.metric_steps(C.Metric.SYNC_SECONDS)) if self.enabled else set()
        self._since, self._epochs, self.last_upload_s = clock(), 0, None
        self._held = False

    def interval_passed(self) -> bool:
        """``every_epochs`` epochs or ``every_minutes`` minutes since the last sync (or the start)."""
        since = self.clock() - self._since
        return self._epochs >= self.cfg.every_epochs or (
            self.cfg.every_minutes is not None and since >= 60.0 * self.cfg.every_minutes)

    def fits(self) -> bool:
        """The last upload took at most ``max_overhead`` of the wall time since it (no upload yet: it fits)."""
        return self.last_upload_s is None or self.last_upload_s <= self.cfg.max_overhead * (self.clock() - self._since)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        if not self.enabled:
            return
        self._epochs += 1
        if not self.interval_passed():
            return
        if not self.fits():
            if not self._held:
                self._held = True
                self.print(f"[{self.label}] checkpoint syncs held back: the last upload took {self.last_upload_s:.1f}s, "
                           f"more than sync.max_overhead={self.cfg.max_overhead:g} of the time since it")
            return
        self.upload(event)

    def upload(self, event: CheckpointSaved) -> None:
        since = self.clock() - self._since
        folder, t0 = C.resume_dir(event.epochs_done), self.clock()
        last = [f for f in event.files if f.name == LAST]
        for path in [f for f in event.files if f.name != LAST] + last:  # last.pt last: the folder is whole with it
            self.tracker.log_artifact(path, folder)
        self.tracker.set_tags({Tag.RESUME_CHECKPOINT: folder, Tag.RESUME_EPOCH: str(event.epochs_done)})
        seconds = self.clock() - t0
        previous, self.current = self.current, folder
        if previous and previous != folder:
            self.tracker.delete_artifacts(previous)  # best effort: a leftover folder costs space, not correctness
        size = sum(f.stat().st_size for f in event.files) / 2**20
        step = event.epochs_done - 1
        if step not in self.synced_steps:
            self.synced_steps.add(step)
            self.tracker.log_metrics({C.Metric.SYNC_SECONDS: seconds, C.Metric.SYNC_MB: size,
                                      C.Metric.SYNC_OVERHEAD: seconds / max(since, 1e-9)}, step)
        self.print(f"[{self.label}] synced the checkpoint after epoch {event.epochs_done} to the store: {size:.1f} MB in "
                   f"{seconds:.1f}s ({100 * seconds / max(since, 1e-9):.1f}% of the {since:.0f}s since the last sync)")
        self._since, self._epochs, self.last_upload_s, self._held = self.clock(), 0, seconds, False

    def on_end(self, event: RunEnd) -> None:
        """A finished run is never resumed: its synced checkpoint goes (a failed or killed one keeps it)."""
        if not self.enabled or event.status != C.FoldStatus.FINISHED:
            return
        current = self.current  # the run's tag: read when the hook started, kept by each upload
        if current and self.tracker.delete_artifacts(current) == "":
            self.tracker.delete_tags([Tag.RESUME_CHECKPOINT, Tag.RESUME_EPOCH])


def restore(tracker: RunTracker, workdir: Path) -> str:
    """Download the run's synced checkpoint into ``workdir`` when that holds no ``last.pt``, an unreadable one or one
    with fewer epochs; returns where it came from ("" when the local one stays). The files are downloaded beside
    the work folder's, then renamed into it, ``last.pt`` last."""
    tags = tracker.tags()
    folder = tags.get(Tag.RESUME_CHECKPOINT, "")
    if not folder:
        return ""
    remote = int(tags.get(Tag.RESUME_EPOCH, "0") or 0)
    local = workdir / LAST
    if local.exists():
        try:
            if read_identity(local)[0] >= remote:
                return ""
        except SaltError:  # a corrupt local copy: the store's replaces it
            pass
    workdir.mkdir(parents=True, exist_ok=True)
    staging = workdir / f".restore-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            got = tracker.download_artifacts(folder, staging)
        except Exception as exc:  # noqa: BLE001 - a folder the tag names but the store lost
            raise SaltError(f"run {tracker.run_id}: its synced resume checkpoint {folder} (tag "
                            f"{Tag.RESUME_CHECKPOINT}) cannot be downloaded ({one_line(exc)}); delete the tag to resume from "
                            "this machine's work folder or from epoch 0") from exc
        files = sorted(p for p in got.iterdir() if p.is_file())
        if LAST not in {p.name for p in files}:
            raise SaltError(f"run {tracker.run_id}: its synced resume checkpoint {folder} has no {LAST}; delete the tag "
                            f"{Tag.RESUME_CHECKPOINT} to resume from this machine's work folder or from epoch 0")
        read_identity(got / LAST)  # readable before anything local is replaced
        for path in sorted(files, key=lambda p: p.name == LAST):
            os.replace(path, workdir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"the store ({folder}, synced after epoch {remote})"
