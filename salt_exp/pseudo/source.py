"""The ensemble version a round's pseudo-labels come from, read back from the registry: its members by fold and how
it turned probabilities into masks (thresholds, rules, cut seams), as its registered model does."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from salt_exp import contract as C
from salt_exp.contract import FULL_FIT, EnsembleVersion, RegistryVersion, SnapshotVersion, Tag
from salt_exp.errors import SaltError
from salt_exp.stores import tracking_uri
from salt_exp.tracking import alias_version, find_runs, registry_versions, run_summary, snapshot_versions


@dataclass(frozen=True, kw_only=True)
class SourceEnsemble:
    """One registered ensemble version as a source of pseudo-labels."""

    study: str
    version: EnsembleVersion
    members: dict[int, list[SnapshotVersion]]  # by fold; FULL_FIT: its full-data fits
    fold_thresholds: dict[int, float]
    threshold: float  # its test threshold
    full_fit_only: bool  # it predicts the test tiles with its full-data fits alone
    rules: tuple[str, ...]
    broken: tuple[tuple[str, str], ...]  # vertical links its seam check cut
    round: int  # the pseudo-labelling round its members trained in (0: none)

    @property
    def key(self) -> str:
        """``salt-<study>-ensemble/v<N>``: how tags and labels name it."""
        return f"{self.version.model}/v{self.version.version}"

    def fold_members(self) -> dict[int, list[SnapshotVersion]]:
        return {f: ms for f, ms in sorted(self.members.items()) if f != FULL_FIT}

    def best_member(self) -> SnapshotVersion:
        """The fold member with the highest val_map (ties: the earlier version)."""
        return _best(m for ms in self.fold_members().values() for m in ms)


def _best(members) -> SnapshotVersion:
    """The member with the highest val_map (ties: the earlier version)."""
    return max(members, key=lambda m: (m.val_map, -int(m.version)))


def _version(study: str, version: str) -> RegistryVersion:
    model = C.ensemble_model(study)
    if not find_runs(C.experiment_name(study), max_results=1):
        raise SaltError(f"--study {study}: no such study (no runs in experiment {C.experiment_name(study)} of "
                        f"{tracking_uri()})")
    if not version.isdigit():
        found = alias_version(model, version)
        if found is None:
            raise SaltError(f"{model} has no {version!r} version: build an ensemble of the study first "
                            f"(salt-exp ensemble --study {study})")
        return found
    return _numbered(model, version)


def _numbered(model: str, version: str) -> RegistryVersion:
    """Version ``version`` (a number) of registered model ``model``; one-line SaltError naming the versions held."""
    versions = {v.version: v for v in registry_versions(model)}
    if version not in versions:
        held = ", ".join(sorted(versions, key=int)) or "none"
        raise SaltError(f"{model} has no version {version} (versions: {held})")
    return versions[version]


def _ensemble(reg: RegistryVersion) -> EnsembleVersion:
    ens = EnsembleVersion.from_version(reg)
    if ens is None:
        raise SaltError(f"{reg.name} v{reg.version} is not an ensemble version (no ensemble_run tag)")
    return ens


def _members(ens: EnsembleVersion) -> dict[int, list[SnapshotVersion]]:
    by_key: dict[str, SnapshotVersion] = {}
    for model in sorted({k.rpartition("/v")[0] for k in ens.members}):
        by_key.update({v.key: v for v in snapshot_versions(model)})
    out: dict[int, list[SnapshotVersion]] = {}
    for key in ens.members:
        if key not in by_key:
            raise SaltError(f"{ens.model} v{ens.version}: member {key} is not a registered snapshot any more")
        out.setdefault(by_key[key].fold, []).append(by_key[key])
    if not any(f != FULL_FIT for f in out):
        raise SaltError(f"{ens.model} v{ens.version} has no fold members: fold labels need each fold's own members")
    return out


def _model_spec(reg: RegistryVersion, cache: Path) -> dict:
    """The registered model's ``ensemble.json`` (thresholds, rules, cut seams), {} for a version without one."""
    if not reg.model_id:
        return {}
    from salt_exp.serving.predictor import SPEC_FILE
    from salt_exp.tracking.models import fetch_model_file

    return json.loads(fetch_model_file(reg.model_id, C.model_weights_path(SPEC_FILE), cache).read_text())


def _round(members: dict[int, list[SnapshotVersion]]) -> int:
    runs = {m.run_id for ms in members.values() for m in ms}
    return max(int(run_summary(r).tags.get(Tag.PSEUDO_ROUND, 0) or 0) for r in runs)


def resolve_source(study: str, version: str, cache: Path) -> SourceEnsemble:
    """Ensemble ``version`` (an alias such as ``champion``, or a number) of ``study``; one-line SaltError when the
    study, the model, the version or a member is missing."""
    reg = _version(study, version)
    ens = _ensemble(reg)
    members = _members(ens)
    run, spec = run_summary(ens.ensemble_run), _model_spec(reg, cache)
    thresholds = {int(k): float(v) for k, v in spec.get("fold_thresholds", {}).items()}
    for fold in members:
        value = run.metrics.get(f"fold{fold}_threshold", math.nan)
        if fold != FULL_FIT and fold not in thresholds and not math.isnan(value):
            thresholds[fold] = float(value)
    missing = [f for f in members if f != FULL_FIT and f not in thresholds]
    if missing:
        raise SaltError(f"{reg.name} v{reg.version}: no threshold for fold(s) {missing} (run {ens.ensemble_run})")
    threshold = float(spec.get("threshold", run.metrics.get("test_threshold", sum(thresholds.values()) / len(thresholds))))
    return SourceEnsemble(study=study, version=ens, members=members, fold_thresholds=thresholds, threshold=threshold,
                          full_fit_only=run.params.get("full_fit") == "only",
                          rules=tuple(spec.get("rules", ens.rules)),
                          broken=tuple((str(a), str(b)) for a, b in spec.get("broken_seams", ())),
                          round=_round(members))


def warm_member(ensemble: str, fold: int) -> SnapshotVersion:
    """The member of ensemble ``salt-<study>-ensemble/v<N>`` (a labels file's ``ensemble``) a warm-started round's
    fold run starts from: that fold's best (highest val_map; ties: the earlier version). Fold k's members never
    trained on fold k's validation tiles, so their weights carry nothing of them."""
    model, sep, number = ensemble.rpartition("/v")
    where = f"pseudo.warm_start: source ensemble {ensemble!r}"
    if not sep or not number.isdigit():
        raise SaltError(f"{where}: expected <registered model>/v<version> (the labels file's 'ensemble')")
    try:
        members = _members(_ensemble(_numbered(model, number))).get(fold, [])
    except SaltError as exc:
        raise SaltError(f"{where}: {exc}") from exc
    if not members:
        raise SaltError(f"{where}: has no member of fold {C.fold_label(fold)} to start that fold from")
    return _best(members)
