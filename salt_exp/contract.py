"""The MLflow contract: every name, tag key, artifact path and record that train, study, ensemble and
viz share. It is the interface between them; writers and readers both use what is defined here.

To add a tag: add its key to :class:`Tag` (or a field to a record with its ``to_tags`` and
``from_tags``); to add an artifact: add its path here. Nothing else spells them. This module imports
no MLflow and no torch: records are built from plain values by ``salt_exp.tracking``.

Runs (experiment ``salt/<study>``):

- fold run (``salt.role=fold``): one fold of one config (:class:`FoldRunTags`), metrics per epoch,
  one snapshot per cosine cycle: its OOF and coverage-bin table under ``snapshots/cycle_<c>/`` and its
  weights in a logged model of the run (a pyfunc model, :func:`snapshot_logged_name`, step = cycle);
- trial run (``salt.role=trial``): a parent of fold runs (:class:`TrialRunTags`), ``cv_map``;
- cv run (``salt.role=cv``): ``salt-exp cv``, a parent of one config's fold runs (:class:`CVRunTags`),
  ``cv_map``, ``fold<k>_map`` and the OOF breakdown by coverage bin;
- ensemble run (``salt.role=ensemble``): members, OOF scores, the submission, ``ensemble/oof.npz``,
  and the ensemble as a logged pyfunc model (its members' weights, threshold, rules, mosaic context).

Registry: each snapshot is a version of ``salt-<study>`` (:class:`SnapshotVersion` tags), each
ensemble a version of ``salt-<study>-ensemble`` (:class:`EnsembleVersion`), the newest with the
alias ``champion``. A version's source is its logged model (``models:/<model_id>``), so
``mlflow.pyfunc.load_model("models:/salt-<study>-ensemble@champion")`` and ``mlflow models serve`` work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------- names

ADHOC = "adhoc"  # the study of fold runs started outside a study
NO_TRIAL = "none"  # the trial tag of a fold run outside a trial
CHAMPION = "champion"  # alias of the ensemble version ensembles and figures use by default


def experiment_name(study: str) -> str:
    return f"salt/{study}"


def snapshot_model(study: str) -> str:
    """The registered model whose versions are the study's cycle snapshots."""
    return f"salt-{study}"


def ensemble_model(study: str) -> str:
    """The registered model whose versions are the study's ensembles."""
    return f"salt-{study}-ensemble"


def snapshot_logged_name(fold: int, cycle: int) -> str:
    """The logged model of one cycle snapshot (run page "Logged models", model pages); ``fold<k>-swa`` for
    :data:`SWA_CYCLE`."""
    return f"fold{fold_label(fold)}-{SWA_LABEL if cycle == SWA_CYCLE else f'cycle{cycle}'}"


def snapshot_model_key(cycle: int) -> str:
    """How a fold run finds its cycle's logged model again (resume: logged once); ``swa`` for :data:`SWA_CYCLE`."""
    return SWA_LABEL if cycle == SWA_CYCLE else f"cycle_{cycle}"


ENSEMBLE_LOGGED_NAME = ENSEMBLE_MODEL_KEY = "ensemble"
SNAPSHOT_MODEL_TYPE, ENSEMBLE_MODEL_TYPE = "salt-snapshot", "salt-ensemble"


def model_weights_path(weights_file: str) -> str:
    """Where a pyfunc model keeps an artifact file: ``artifacts/<name>`` inside the logged model."""
    return f"artifacts/{Path(weights_file).name}"


def trial_label(trial: int | None) -> str:
    return NO_TRIAL if trial is None else str(trial)


FULL_FIT = -1  # the "fold" of a full-data fit: trained on every labelled tile, nothing held out
FULL_FIT_LABEL = "all"  # how a full-data fit's fold is written in tags and run names


def fold_label(fold: int) -> str:
    """A fold as tags write it: ``0``.. or ``all`` for a full-data fit."""
    return FULL_FIT_LABEL if fold == FULL_FIT else str(fold)


def parse_fold(text: str) -> int:
    """The inverse of :func:`fold_label`."""
    return FULL_FIT if text == FULL_FIT_LABEL else int(text)


class Tag:
    """Run tag keys."""

    STUDY = "salt.study"
    TRIAL = "salt.trial"  # a trial's MLflow trial number (a resumed trial keeps the first attempt's)
    FOLD = "salt.fold"
    ROLE = "salt.role"
    CONFIG_HASH = "salt.config_hash"
    ENCODER = "salt.encoder"
    DATA_ROOT = "salt.data_root"
    STATUS = "salt.status"  # fold runs: FoldStatus; trial and cv runs: TrialState
    FAILURE = "salt.failure"
    LR_FIND_REASON = "salt.lr_find_reason"
    STUDY_UID = "salt.study_uid"
    OPTUNA_TRIAL = "salt.optuna_trial"  # the latest Optuna attempt of a trial
    DURATION_S = "salt.duration_s"
    PRECISION = "salt.precision"  # fp32 | bf16 | fp16: what the run trained with (train.precision_used param too)
    PRECISION_SOURCE = "salt.precision_source"  # measured | cached | requested | unsupported | cuda
    PRECISION_REASON = "salt.precision_reason"
    PRECISION_TIMINGS = "salt.precision_timings"  # images/s of each timed candidate
    PRECISION_REQUESTED = "salt.precision_requested"
    CPU = "salt.cpu"  # the processor and its bf16-relevant flags
    CPU_BF16 = "salt.cpu_bf16"  # amx | avx512_bf16 | emulated | none
    CV_FOLDS = "salt.cv_folds"  # cv runs: the folds of the latest `salt-exp cv`, comma-separated
    BUDGET_NOTE = "salt.budget_note"  # budgeted fold runs: why the plan differs from the config's cycles
    FULL_FIT_OF = "salt.full_fit_of"  # a full-data fit: the cv run whose fold runs set its steps and threshold
    FULL_FIT_RUN = "salt.full_fit_run"  # a cv run: its full-data fit's run id
    ENSEMBLE_KEY = "salt.ensemble_key"  # ensemble runs: digest of members and options; a killed one is continued
    MODEL_KEY = "salt.model_key"  # logged models: how a run finds its own model again ("cycle_<c>", "ensemble")
    MODEL_LOG_SECONDS = "salt.log_seconds"  # logged models: what logging it cost (save, upload, links)
    # --- resume checkpoints synced to the store (salt_exp.train.sync): another machine continues the fold run
    RESUME_CHECKPOINT = "salt.resume.checkpoint"  # the artifact folder of the latest complete synced checkpoint
    RESUME_EPOCH = "salt.resume.epoch"  # epochs done in it
    RESUMED_FROM = "salt.resumed_from"  # the latest resume: "epoch <n> from <host>'s work folder" or "... the store"
    RESUME_WARNING = "salt.resume_warning"  # a resume from a checkpoint another commit wrote
    # --- pseudo-labelling (`salt-exp pseudo`): a pseudo run's source, and the lineage of the runs trained on its labels
    PSEUDO_ENSEMBLE = "salt.pseudo_ensemble"  # the ensemble version that made the labels: "salt-<study>-ensemble/v<N>"
    PSEUDO_RUN = "salt.pseudo_run"  # fold and cv runs: the pseudo run whose labels artifact they trained on
    PSEUDO_ROUND = "salt.pseudo_round"  # 1: labels from an ensemble of runs without pseudo-labels; +1 per round
    PSEUDO_KEY = "salt.pseudo_key"  # pseudo runs: digest of source version, data, folds and confidence rules (reused)
    # --- end of pseudo-labelling
    GIT_COMMIT = "mlflow.source.git.commit"  # a bare SHA
    GIT_DIRTY = "mlflow.source.git.dirty"  # "true" when tracked files had uncommitted changes
    GIT_BRANCH = "mlflow.source.git.branch"
    GIT_REPO_URL = "mlflow.source.git.repoURL"
    PARENT_RUN = "mlflow.parentRunId"
    LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # MLflow's own list of table artifacts (UI)


class Role(StrEnum):
    FOLD = "fold"
    TRIAL = "trial"
    CV = "cv"
    ENSEMBLE = "ensemble"
    PSEUDO = "pseudo"  # `salt-exp pseudo`: the labels a round trains on (see the pseudo-labelling block at the end)


class RunStatus(StrEnum):
    """MLflow's run statuses as this project ends runs."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class FoldStatus(StrEnum):
    """``salt.status`` of a fold run: how its training ended."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"  # non-finite loss; the reason in salt.failure
    PRUNED = "PRUNED"  # stopped by the study's pruner


class TrialState(StrEnum):
    """``salt.status`` of a trial run (Optuna's vocabulary plus INTERRUPTED)."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    INTERRUPTED = "INTERRUPTED"


class TrialAttr:
    """Optuna trial user attributes (the study storage's side of the contract)."""

    WORKER = "salt.worker"  # host:pid:process start time of the worker running it
    HEARTBEAT = "salt.heartbeat"
    MLFLOW_TRIAL = Tag.TRIAL
    RESUME_OF = "salt.resume_of"
    FAILURE = Tag.FAILURE
    SKIPPED = "salt.skipped"
    PARENT_RUN_ID = "salt.parent_run_id"
    CUDA_DEVICES = "salt.cuda_visible_devices"  # the GPU(s) the trial's worker was given
    RUN_URL = "mlflow_run"  # the trial run's page in the MLflow UI (optuna-dashboard shows user attributes)

    @staticmethod
    def fold_map(fold: int) -> str:
        return f"salt.fold{fold}_map"

    @staticmethod
    def parse_fold_map(key: str) -> int | None:
        """The fold of a ``salt.fold<k>_map`` key, None for any other key."""
        head, tail = "salt.fold", "_map"
        if key.startswith(head) and key.endswith(tail) and key[len(head):-len(tail)].isdigit():
            return int(key[len(head):-len(tail)])
        return None


STUDY_UID_ATTR = Tag.STUDY_UID  # Optuna study user attribute: the uid trial runs are tagged with
OLD_STUDY_UID_ATTR = "salt.uid"  # the same attribute in studies created before it was renamed


class Metric:
    """Metric keys read by more than one module (per-epoch keys are documented in README)."""

    VAL_MAP = "val_map"
    BEST_VAL_MAP = "best_val_map"
    SNAPSHOT_VAL_MAP = "snapshot_val_map"
    SNAPSHOT_EPOCH = "snapshot_epoch"
    CV_MAP = "cv_map"
    CV_MAP_SD = "cv_map_sd"  # population standard deviation of the fold maps
    OOF_MAP = "oof_map"
    # time-budgeted fold runs (schedule.budget_minutes): the plan (also params) and what was done
    BUDGET_MINUTES = "budget_minutes"
    PLANNED_CYCLES = "planned_cycles"
    PLANNED_CYCLE_EPOCHS = "planned_cycle_epochs"
    PLANNED_EPOCHS = "planned_epochs"
    BUDGET_SHARE = "budget_share"  # per epoch of a budgeted run: share of the budget spent at its end
    PLANNED_EPOCH_BATCHES = "planned_epoch_batches"  # training batches per planned epoch (<= a full pass)
    PLANNED_STEPS = "planned_steps"
    DONE_EPOCHS = "done_epochs"
    DONE_STEPS = "done_steps"
    BUDGET_USED_S = "budget_used_s"
    # resume checkpoints synced to the store, per synced epoch: upload seconds, size, share of the training time
    SYNC_SECONDS = "sync_seconds"
    SYNC_MB = "sync_mb"
    SYNC_OVERHEAD = "sync_overhead"  # upload seconds / wall seconds since the previous sync (or the run's start)

    @staticmethod
    def fold_map(fold: int) -> str:
        return f"fold{fold}_map"

    @staticmethod
    def oof_map_bin(bin_name: str) -> str:
        return f"oof_map_bin_{bin_name}"

    @staticmethod
    def oof_err_share(bin_name: str) -> str:
        return f"oof_err_share_{bin_name}"

    @staticmethod
    def pseudo_audit(fold: int, name: str) -> str:
        """A pseudo run's audit of fold ``fold``'s labels on its validation tiles (``pseudo.confidence.audit``)."""
        return f"fold{fold_label(fold)}_audit_{name}"


# ---------------------------------------------------------------- artifact paths

CONFIG_FILE = "config.yaml"
FOLDS_DIR = "folds"
LR_FIND_PNG = "lr_find.png"
COVERAGE_TABLE = "coverage_bins.json"  # run root: every cycle so far; snapshot folder: that cycle
COVERAGE_PNG = "coverage_bins.png"
SNAPSHOT_OOF_FILE = "oof.npz"
RESUME_DIR = "resume"  # resume/e<epochs done>/: a synced checkpoint (last.pt, precision.json, unpublished snapshots)


def resume_dir(epochs_done: int) -> str:
    return f"{RESUME_DIR}/e{epochs_done:04d}"
ENSEMBLE_DIR = "ensemble"
ENSEMBLE_MEMBERS = "ensemble/members.json"
ENSEMBLE_OOF = "ensemble/oof.npz"
ENSEMBLE_OOF_TABLE = "oof_coverage_bins.json"
ENSEMBLE_PP_TABLE = "postprocess_gains.json"
ENSEMBLE_WATERFALL_TABLE = "waterfall.json"  # each step's OOF score and gain (salt_exp.ensemble.waterfall), run root
ENSEMBLE_WATERFALL_PNG = "ensemble/waterfall.png"
CV_OOF_TABLE = ENSEMBLE_OOF_TABLE  # a cv run's OOF breakdown by coverage bin, in the ensemble's table format
VIZ_DIR = "viz"
REPORT_DIR = "report"


def snapshot_dir(cycle: int) -> str:
    return f"snapshots/{SWA_LABEL}" if cycle == SWA_CYCLE else f"snapshots/cycle_{cycle}"


def snapshot_oof(cycle: int) -> str:
    return f"{snapshot_dir(cycle)}/{SNAPSHOT_OOF_FILE}"


# ---------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What a query returns of a run: ids, status, times (ms), experiment, tags, params, metrics."""

    run_id: str
    experiment: str
    status: str
    start_ms: int = 0
    end_ms: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def role(self) -> str | None:
        return self.tags.get(Tag.ROLE)

    @property
    def study(self) -> str | None:
        return self.tags.get(Tag.STUDY)

    @property
    def data_root(self) -> str | None:
        """The dataset the run used: a fold run's tag, an ensemble run's param."""
        return self.tags.get(Tag.DATA_ROOT) or self.params.get("data_root")


@dataclass(frozen=True, kw_only=True)
class RegistryVersion:
    """One registered model version as stored, before its tags are read as a record."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    created_ms: int = 0
    model_id: str = ""  # the logged model the version was created from (MLflow 3); "" for a plain artifact folder


@dataclass(frozen=True, kw_only=True)
class FoldRunTags:
    """The tags a fold run starts with; ``resume_keys`` find it again to continue it."""

    study: str
    trial: str
    fold: int
    config_hash: str
    encoder: str
    data_root: str

    def to_tags(self) -> dict[str, str]:
        return {Tag.STUDY: self.study, Tag.TRIAL: self.trial, Tag.FOLD: fold_label(self.fold), Tag.ROLE: Role.FOLD.value,
                Tag.CONFIG_HASH: self.config_hash, Tag.ENCODER: self.encoder, Tag.DATA_ROOT: self.data_root}

    def resume_filter(self) -> str:
        """MLflow filter for earlier runs of this study/trial/fold/config."""
        tags = self.to_tags()
        return " and ".join(f"tags.`{k}` = '{tags[k]}'" for k in (Tag.TRIAL, Tag.FOLD, Tag.CONFIG_HASH, Tag.ROLE))


@dataclass(frozen=True, kw_only=True)
class TrialRunTags:
    study: str
    study_uid: str
    trial: int

    def to_tags(self) -> dict[str, str]:
        return {Tag.ROLE: Role.TRIAL.value, Tag.STUDY: self.study, Tag.STUDY_UID: self.study_uid,
                Tag.TRIAL: str(self.trial)}

    def find_filter(self) -> str:
        return f"{self.study_filter(self.study_uid)} and tags.`{Tag.TRIAL}` = '{self.trial}'"

    @staticmethod
    def study_filter(study_uid: str) -> str:
        """Every trial run of the study with this uid, whatever the trial."""
        return f"tags.`{Tag.ROLE}` = '{Role.TRIAL.value}' and tags.`{Tag.STUDY_UID}` = '{study_uid}'"


@dataclass(frozen=True, kw_only=True)
class CVRunTags:
    """A cv run: one per study and config hash, so rerunning the same ``salt-exp cv`` continues it."""

    study: str
    config_hash: str

    def to_tags(self) -> dict[str, str]:
        return {Tag.ROLE: Role.CV.value, Tag.STUDY: self.study, Tag.CONFIG_HASH: self.config_hash}

    def find_filter(self) -> str:
        return (f"tags.`{Tag.ROLE}` = '{Role.CV.value}' and tags.`{Tag.STUDY}` = '{self.study}' "
                f"and tags.`{Tag.CONFIG_HASH}` = '{self.config_hash}'")


@dataclass(frozen=True, kw_only=True)
class DatasetRecord:
    """What a run trained or validated on, logged as an MLflow dataset input (the run page's "Datasets")."""

    name: str  # e.g. tgs-fold0-train
    digest: str  # of the split's tile ids and the folds file: two runs on other data differ here
    source: str  # the data folder
    context: str  # train | validation
    profile: dict[str, Any] = field(default_factory=dict)  # tiles, folds file, fold


def ensemble_run_tags(study: str) -> dict[str, str]:
    return {Tag.ROLE: Role.ENSEMBLE.value, Tag.STUDY: study}


SNAPSHOT_REQUIRED = ("fold", "cycle", "val_map", "oof", "weights")


@dataclass(frozen=True, kw_only=True)
class SnapshotVersion:
    """One registered cycle snapshot: where its weights and out-of-fold probabilities live.

    ``version`` is empty until registered; ``created_ms`` is the registry's creation time. ``model_id``:
    the snapshot's logged model, whose artifacts hold the weights (``weights`` is then a path inside
    the model); versions registered before logged models keep ``weights`` in the run (``model_id`` ""). A full-data
    fit's snapshot (``fold`` :data:`FULL_FIT`, tag ``fold=all``) has no out-of-fold predictions (``oof``
    empty, ``val_map`` NaN) and its ``val_best_thr`` is the threshold its cv runs chose.
    """

    model: str
    version: str = ""
    run_id: str
    study: str = ADHOC
    trial: str = NO_TRIAL
    fold: int
    cycle: int
    epoch: int = -1
    val_map: float
    val_best_thr: float = 0.5
    encoder: str = "?"
    weights: str  # artifact path inside model_id's artifacts (or inside run_id when model_id is "")
    oof: str  # artifact path inside run_id
    created_ms: int = 0
    model_id: str = ""

    @property
    def key(self) -> str:
        return f"{self.model}/v{self.version}"

    @property
    def full_fit(self) -> bool:
        return self.fold == FULL_FIT

    @property
    def swa(self) -> bool:
        """An average of its run's cycle snapshots (``salt-exp swa``), not one cycle's best epoch."""
        return self.cycle == SWA_CYCLE

    def to_tags(self) -> dict[str, str]:
        return {"study": self.study, "trial": self.trial, "fold": fold_label(self.fold), "encoder": self.encoder,
                "run_id": self.run_id, "cycle": str(self.cycle), "epoch": str(self.epoch),
                "val_map": f"{self.val_map:.6f}", "val_best_thr": str(self.val_best_thr), "weights": self.weights,
                "oof": self.oof}

    @classmethod
    def from_version(cls, v: RegistryVersion) -> SnapshotVersion | None:
        """The snapshot a version records, or None when its tags are not a snapshot's."""
        t = v.tags
        if not all(k in t for k in SNAPSHOT_REQUIRED):
            return None
        return cls(model=v.name, version=v.version, run_id=v.run_id, study=t.get("study", ADHOC),
                   trial=t.get("trial", NO_TRIAL), fold=parse_fold(t["fold"]), cycle=int(t["cycle"]),
                   epoch=int(t.get("epoch", -1)), val_map=float(t["val_map"]),
                   val_best_thr=float(t.get("val_best_thr", 0.5)), encoder=t.get("encoder", "?"),
                   weights=t["weights"], oof=t["oof"], created_ms=v.created_ms, model_id=v.model_id)

    def member_row(self) -> dict[str, Any]:
        """The row of ``ensemble/members.json``."""
        return {"key": self.key, "run_id": self.run_id, "fold": fold_label(self.fold) if self.full_fit else self.fold,
                "cycle": self.cycle, "val_map": None if self.full_fit else self.val_map, "encoder": self.encoder, "trial": self.trial,
                "model_id": self.model_id}


def best_snapshot(versions: Sequence[SnapshotVersion]) -> SnapshotVersion:
    """The best of one run's snapshots: highest ``val_map``, ties keep the earlier cycle."""
    return max(versions, key=lambda v: (v.val_map, -v.cycle))


# ---------------------------------------------------------------- SWA snapshots (``salt-exp swa``)
# An SWA snapshot averages the weights of one fold run's cycle snapshots, its BatchNorm statistics recomputed on
# the fold's training tiles. It is logged into that same fold run like a cycle (OOF and coverage-bin table under
# ``snapshots/swa/``, weights in the logged model ``fold<k>-swa`` with model key ``swa``) and registered as a
# version of ``salt-<study>`` with the usual snapshot tags, ``cycle`` = SWA_CYCLE, plus SWA_CYCLES_TAG, so the
# ensemble selects it by ``val_map`` like any cycle (``SnapshotVersion.swa`` tells it apart).

SWA_CYCLE = -1  # the ``cycle`` of an SWA version (cycles are 0-based otherwise)
SWA_LABEL = "swa"  # how SWA_CYCLE is written: its folder, its logged model's name and key, messages
SWA_CYCLES_TAG = "swa_cycles"  # version tag: the cycles averaged, comma-separated
SWA_WEIGHTS_FILE = "swa.pt"  # the checkpoint inside the logged model (the cycles': cycle<c>_epoch<e>.pt)


class SWAMetric:
    """Fold-run metrics of its SWA snapshot (step 0, linked to its logged model)."""

    VAL_MAP = "swa_val_map"
    VAL_MAP_BEST_THR = "swa_val_map_best_thr"
    VAL_BEST_THR = "swa_val_best_thr"
    CYCLES = "swa_cycles"  # how many cycle snapshots were averaged


def cycle_label(cycle: int) -> str:
    """A snapshot's cycle as messages and figures write it: ``cycle 2``, or ``swa``."""
    return SWA_LABEL if cycle == SWA_CYCLE else f"cycle {cycle}"


@dataclass(frozen=True, kw_only=True)
class EnsembleVersion:
    """One registered ensemble: its run, the member versions it pins and its scores."""

    model: str
    version: str = ""
    study: str
    ensemble_run: str
    members: tuple[str, ...]  # SnapshotVersion keys
    oof_map: float
    rules: tuple[str, ...] = ()
    created_ms: int = 0

    def to_tags(self) -> dict[str, str]:
        return {"study": self.study, "members": json.dumps(list(self.members)), "oof_map": f"{self.oof_map:.6f}",
                "rules": ",".join(self.rules) or "none", "ensemble_run": self.ensemble_run}

    @classmethod
    def from_version(cls, v: RegistryVersion) -> EnsembleVersion | None:
        t = v.tags
        if "ensemble_run" not in t:
            return None
        rules = () if t.get("rules", "none") == "none" else tuple(t["rules"].split(","))
        return cls(model=v.name, version=v.version, study=t.get("study", "?"), ensemble_run=t["ensemble_run"],
                   members=tuple(json.loads(t.get("members", "[]"))), oof_map=float(t.get("oof_map", "nan")),
                   rules=rules, created_ms=v.created_ms)


# ---------------------------------------------------------------- stored arrays and tables


def write_snapshot_oof(path: Path, ids: np.ndarray, probs: np.ndarray) -> Path:
    """A snapshot's ``oof.npz``: validation ``ids`` and float16 ``probs`` (N, 101, 101)."""
    np.savez_compressed(path, ids=ids, probs=probs.astype(np.float16))
    return path


def read_snapshot_oof(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["ids"], z["probs"]


@dataclass(frozen=True, kw_only=True)
class EnsembleOOF:
    """``ensemble/oof.npz``: what an ensemble predicted out of fold, so analyses never recompute it."""

    ids: np.ndarray  # (N,) str
    probs: np.ndarray  # (N, 101, 101) float16 mean probabilities
    threshold: np.ndarray  # (N,) float32 threshold each tile got (its fold's)
    fold: np.ndarray  # (N,) int
    pred: np.ndarray  # (N, 101, 101) bool: masks after the applied post-processing rules


def write_ensemble_oof(path: Path, oof: EnsembleOOF) -> Path:
    np.savez_compressed(path, ids=oof.ids, probs=oof.probs.astype(np.float16),
                        threshold=oof.threshold.astype(np.float32), fold=oof.fold.astype(np.int16),
                        pred=np.packbits(oof.pred.astype(bool), axis=-1))  # bit-packed rows
    return path


def read_ensemble_oof(path: Path) -> EnsembleOOF:
    with np.load(path, allow_pickle=False) as z:
        probs = z["probs"]
        pred = np.unpackbits(z["pred"], axis=-1, count=probs.shape[-1]).astype(bool)
        return EnsembleOOF(ids=z["ids"].astype(str), probs=probs, threshold=z["threshold"],
                           fold=z["fold"].astype(np.int64), pred=pred)


def table_json(columns: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A column mapping in MLflow's table format (``{"columns": [...], "data": [[...], ...]}``)."""
    names = list(columns)
    rows = [list(r) for r in zip(*(columns[n] for n in names), strict=True)]
    return {"columns": names, "data": rows}


# ---------------------------------------------------------------- pseudo-labelling (`salt-exp pseudo`)
# A pseudo run (``salt.role=pseudo`` in ``salt/<study of the round>``) labels the data's test tiles from one ensemble
# version and logs them as PSEUDO_LABELS; the round's fold runs read them through their config's ``pseudo.labels``
# (:func:`pseudo_labels_uri`) and carry ``Tag.PSEUDO_RUN`` / ``PSEUDO_ENSEMBLE`` / ``PSEUDO_ROUND``. Fold k's labels
# are made by fold k's members alone, with fold k's validation tiles hidden from the mosaic rules, so no fold's
# labels depend on its validation truth; the ``all`` entry (a full-data fit's) is the whole ensemble's.

PSEUDO_LABELS = "pseudo/labels.npz"
PSEUDO_COUNTS = "pseudo/counts.json"  # a table: per fold, tiles kept empty / non-empty, dropped, the threshold
_RUNS_SCHEME = "runs:/"


def pseudo_labels_uri(run_id: str) -> str:
    """What ``pseudo.labels`` holds: a pseudo run's labels artifact."""
    return f"{_RUNS_SCHEME}{run_id}/{PSEUDO_LABELS}"


def parse_pseudo_labels(text: str) -> tuple[str, str]:
    """(run id, artifact path) of a ``pseudo.labels`` value: ``runs:/<run_id>/<path>`` or a bare run id (its
    :data:`PSEUDO_LABELS`); ValueError naming the expected forms otherwise."""
    if text.startswith(_RUNS_SCHEME):
        run_id, _, path = text[len(_RUNS_SCHEME):].partition("/")
    else:
        run_id, path = text, PSEUDO_LABELS
    if not run_id or not path or not all(c.isalnum() or c in "-_" for c in run_id):
        raise ValueError(f"expected runs:/<run_id>/{PSEUDO_LABELS} or a run id, got {text!r}")
    return run_id, path


@dataclass(frozen=True, kw_only=True)
class FoldPseudoLabels:
    """The pseudo-labels one fold trains on: the test tiles the confidence rules kept, and their masks."""

    fold: int  # FULL_FIT: the labels of a full-data fit (made by the whole ensemble)
    ids: np.ndarray  # (n,) str test tile ids
    masks: np.ndarray  # (n, 101, 101) uint8 0/1: the post-processed ensemble masks (kept-empty tiles all 0)
    threshold: float  # what the probabilities were thresholded at
    kept_empty: int
    kept_nonempty: int
    dropped: int
    # (n, 101, 101) bool: pixels the segmentation losses leave out (pseudo.ignore_band; optional in the file: a
    # labels file without it, or one made without the band, ignores nothing)
    ignore: np.ndarray | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {"kept_empty": self.kept_empty, "kept_nonempty": self.kept_nonempty, "dropped": self.dropped}

    @property
    def ignored_pixels(self) -> int:
        return 0 if self.ignore is None else int(np.count_nonzero(self.ignore))


@dataclass(frozen=True, kw_only=True)
class PseudoLabels:
    """``pseudo/labels.npz``: per fold its labels, and where they came from (``source``: ensemble, ensemble_run,
    round, pseudo_run, rules, the confidence settings), so a run trained on them can name its lineage."""

    folds: dict[int, FoldPseudoLabels]
    source: dict[str, str]


def write_pseudo_labels(path: Path, labels: PseudoLabels) -> Path:
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(labels.source, sort_keys=True)),
                                     "folds": np.array([fold_label(f) for f in labels.folds], dtype=str)}
    for fold, fl in labels.folds.items():
        key = fold_label(fold)
        arrays[f"{key}_ids"] = np.asarray(fl.ids, dtype=str)
        arrays[f"{key}_masks"] = np.packbits(np.asarray(fl.masks, dtype=bool), axis=-1)  # bit-packed rows
        arrays[f"{key}_counts"] = np.array([fl.kept_empty, fl.kept_nonempty, fl.dropped], dtype=np.int64)
        arrays[f"{key}_threshold"] = np.array(fl.threshold, dtype=np.float64)
        if fl.ignored_pixels:
            arrays[f"{key}_ignore"] = np.packbits(np.asarray(fl.ignore, dtype=bool), axis=-1)
    np.savez_compressed(path, **arrays)
    return path


def read_pseudo_labels(path: Path) -> PseudoLabels:
    with np.load(path, allow_pickle=False) as z:
        folds = {}
        for key in z["folds"].astype(str).tolist():
            counts = z[f"{key}_counts"].tolist()
            masks = np.unpackbits(z[f"{key}_masks"], axis=-1, count=101).astype(np.uint8)
            ignore = None
            if f"{key}_ignore" in z.files:
                ignore = np.unpackbits(z[f"{key}_ignore"], axis=-1, count=101).astype(bool).reshape(-1, 101, 101)
                if ignore.shape != masks.reshape(-1, 101, 101).shape:
                    raise ValueError(f"{key}_ignore holds {len(ignore)} tiles, {key}_masks {len(masks)}")
            folds[parse_fold(key)] = FoldPseudoLabels(
                fold=parse_fold(key), ids=z[f"{key}_ids"].astype(str), masks=masks.reshape(-1, 101, 101),
                threshold=float(z[f"{key}_threshold"]), kept_empty=counts[0], kept_nonempty=counts[1], dropped=counts[2],
                ignore=ignore)
        return PseudoLabels(folds=folds, source=json.loads(str(z["meta"])))
