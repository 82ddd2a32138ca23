"""``salt-exp pseudo``: one pseudo-labelling round, tracked.

From an ensemble version of a study (default its champion): a pseudo run (``salt.role=pseudo``) in the round's
study labels the data's test tiles per fold (``pseudo/labels.npz``; params and tags name the source ensemble
model, version and run, the confidence rules, per fold the kept/dropped counts), then ``salt-exp cv`` trains the
round's config with ``pseudo.labels`` set to that artifact; its fold runs carry ``salt.pseudo_ensemble``,
``salt.pseudo_run`` and ``salt.pseudo_round``. The round's study defaults to ``<study>-pl<round>``; after an
ensemble of it, ``salt-exp pseudo --study <study>-pl1`` makes round 2. Rerunning the same command reuses the
pseudo run (same source version, data, folds and confidence rules) and so continues the same cv.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from salt_exp import contract as C
from salt_exp.config import ExperimentConfig, load_config
from salt_exp.contract import FULL_FIT, FoldPseudoLabels, PseudoLabels, RunStatus, Tag
from salt_exp.cv import CVResult, parse_folds, run_cv
from salt_exp.data.context import ContextPool
from salt_exp.errors import SaltError, one_line
from salt_exp.pseudo.source import SourceEnsemble, resolve_source
from salt_exp.tracking import RunTracker, fetch_artifact, find_runs, temp_dir
from salt_exp.train.run import FoldRunInfo
from salt_exp.train.setup import load_fold

CONFIDENCE_KEYS = ("empty_max_prob", "pixel_low", "pixel_high", "min_confident_pixels", "ignore_band", "empty_share")
# confidence keys added after labels were first made, with the value that behaves as before: left out of the labels
# key at that value, so an earlier round's labels are still found
_ADDED_LATER = {"ignore_band": False, "empty_share": None}


@dataclass(frozen=True, kw_only=True)
class PseudoRequest:
    study: str  # the source ensemble's study
    version: str = C.CHAMPION  # an alias or a version number of salt-<study>-ensemble
    config: str | None = None  # the round's config (default: the source ensemble's best member's)
    overrides: tuple[str, ...] = ()
    folds: str | None = None  # folds to train (default every fold of the config)
    into: str | None = None  # the round's study (default <study>-pl<round>)
    full_fit: bool = False  # then a full-data fit on every tile plus the whole ensemble's labels
    device: str = "auto"


@dataclass(frozen=True, kw_only=True)
class PseudoOutcome:
    source: SourceEnsemble
    study: str  # the round's study
    round: int
    pseudo_run: str
    reused: bool  # the pseudo run of an earlier identical command
    labels: dict[int, FoldPseudoLabels]
    cv: CVResult
    full_fit: FoldRunInfo | None = None


def round_study(study: str, source_round: int) -> str:
    """``<study>-pl<round>``, the source's own ``-pl<n>`` suffix replaced: s -> s-pl1 -> s-pl2."""
    suffix = f"-pl{source_round}"
    base = study[: -len(suffix)] if source_round and study.endswith(suffix) else study
    return f"{base}-pl{source_round + 1}"


def round_config(source: SourceEnsemble, config: str | None, overrides: tuple[str, ...], cache: Path) -> ExperimentConfig:
    """``config`` with the overrides, or else the config its best member trained with (its ``config.yaml``)."""
    if config is not None:
        return load_config(config, overrides)
    best = source.best_member()
    return load_config(fetch_artifact(best.run_id, C.CONFIG_FILE, cache), overrides)


def pseudo_key(source: SourceEnsemble, cfg: ExperimentConfig) -> str:
    """What makes one set of labels: the source version, the data and its folds, the confidence rules."""
    d, p = cfg.data, cfg.pseudo
    payload = {"ensemble": source.key, "data": str(Path(d.root).resolve()), "folds": [d.folds_scheme, d.n_folds, d.folds_seed],
               **{k: getattr(p, k) for k in CONFIDENCE_KEYS
                  if k not in _ADDED_LATER or getattr(p, k) != _ADDED_LATER[k]}}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def run_pseudo(request: PseudoRequest) -> PseudoOutcome:
    """One round: label (or reuse the labels of an identical earlier command), then cross-validate on them."""
    with temp_dir() as tmp:
        cache = Path(tmp)
        source = resolve_source(request.study, request.version, cache)
        cfg = round_config(source, request.config, request.overrides, cache)
        folds = _source_folds(source, parse_folds(request.folds, cfg.data.n_folds))
        study = request.into or round_study(request.study, source.round)
        if study == request.study:
            raise SaltError(f"--into {study}: a round trains in a study of its own, not in its source study")
        run_id, labels, reused = _labels_run(source, cfg, study, cache, request.device)
    cfg = replace(cfg, pseudo=replace(cfg.pseudo, labels=C.pseudo_labels_uri(run_id)))
    cv = run_cv(cfg, folds=folds, study=study)
    lineage = {Tag.PSEUDO_ENSEMBLE: source.key, Tag.PSEUDO_RUN: run_id, Tag.PSEUDO_ROUND: str(source.round + 1)}
    RunTracker.attach(cv.run_id).set_tags(lineage)
    full = None
    if request.full_fit:
        from salt_exp.full_fit import run_full_fit

        full, _ = run_full_fit(cfg, cv)
    return PseudoOutcome(source=source, study=study, round=source.round + 1, pseudo_run=run_id, reused=reused,
                         labels=labels, cv=cv, full_fit=full)


def _labels_run(source: SourceEnsemble, cfg: ExperimentConfig, study: str, cache: Path,
                device: str) -> tuple[str, dict[int, FoldPseudoLabels], bool]:
    """(run id, labels, reused): the finished pseudo run of the same key in ``study``, else a new one."""
    key = pseudo_key(source, cfg)
    found = [r for r in find_runs(C.experiment_name(study), f"tags.`{Tag.ROLE}` = '{C.Role.PSEUDO.value}' and "
                                  f"tags.`{Tag.PSEUDO_KEY}` = '{key}'") if r.status == RunStatus.FINISHED.value]
    if found:
        path = fetch_artifact(found[0].run_id, C.PSEUDO_LABELS, cache)
        return found[0].run_id, C.read_pseudo_labels(path).folds, True
    tags = {Tag.ROLE: C.Role.PSEUDO.value, Tag.STUDY: study, Tag.PSEUDO_ENSEMBLE: source.key,
            Tag.PSEUDO_ROUND: str(source.round + 1), Tag.PSEUDO_KEY: key}
    tracker = RunTracker.start(C.experiment_name(study), f"pseudo-round{source.round + 1}", tags)
    status = RunStatus.FAILED
    try:
        tracker.log_params(_params(source, cfg))
        labels, audits = _label(source, cfg, tracker.run_id, cache, device)
        _log_labels(tracker, labels, audits)
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    except Exception as exc:
        tracker.set_tags({Tag.FAILURE: one_line(exc)})
        raise
    finally:
        tracker.end(status)
    return tracker.run_id, labels.folds, False


def _params(source: SourceEnsemble, cfg: ExperimentConfig) -> dict[str, object]:
    params = {"source_study": source.study, "source_model": source.version.model, "source_version": source.version.version,
              "source_run": source.version.ensemble_run, "rules": ",".join(source.rules) or "none",
              "data_root": str(Path(cfg.data.root).resolve()), "test_threshold": round(source.threshold, 4),
              **{f"pseudo.{k}": getattr(cfg.pseudo, k) for k in CONFIDENCE_KEYS}}
    for fold, ms in source.members.items():  # which members made each fold's labels
        params[f"fold{C.fold_label(fold)}_members"] = ",".join(m.key for m in ms)
    return params


def _labeller(source: SourceEnsemble, cfg: ExperimentConfig, cache: Path):
    """(labeller, data, every tile's fold, each source fold's validation ids), the members' folds checked."""
    from salt_exp.ensemble.build import mosaic_table
    from salt_exp.pseudo.labels import Labeller, check_member_folds

    fd = load_fold(cfg, FULL_FIT)  # the data and every tile's persisted fold
    data, tile_fold = fd.data, fd.folds["fold"].to_numpy()
    if data.test is None or not len(data.test):
        raise SaltError(f"{data.root}: no test/images to pseudo-label")
    val_ids = {f: data.train.ids[tile_fold == f] for f in source.fold_members()}
    check_member_folds(source.fold_members(), val_ids, cache)
    frame, _ = mosaic_table(data)
    labeller = Labeller(test=data.test, train=data.train, frame=frame, rules=source.rules, broken=source.broken,
                        confidence=cfg.pseudo, pool=ContextPool.from_data(data))
    return labeller, data, tile_fold, val_ids


def audit_line(fold: int, audit: dict | None) -> str:
    """``confidence.audit`` of one fold in one line."""
    from salt_exp.pseudo.confidence import AUDIT_LINE

    return "" if not audit else f"[pseudo] fold {C.fold_label(fold)} audit on its " + AUDIT_LINE.format(**audit)


def audit_pseudo(request: PseudoRequest) -> dict[int, dict[str, float]]:
    """``salt-exp pseudo --audit``: the round's confidence rules on each requested fold's validation tiles, where the
    truth is known (``confidence.audit``), printed; no test tile labelled, nothing trained or logged."""
    from salt_exp.ensemble.predict import member_predictor

    with temp_dir() as tmp:
        cache = Path(tmp)
        source = resolve_source(request.study, request.version, cache)
        cfg = round_config(source, request.config, request.overrides, cache)
        folds = _source_folds(source, parse_folds(request.folds, cfg.data.n_folds))
        labeller, _, _, val_ids = _labeller(source, cfg, cache)
        for fold in folds:
            members = [member_predictor(m, cache, request.device) for m in source.members[fold]]
            labeller.audit_fold(members, fold=fold, threshold=source.fold_thresholds[fold], hidden=val_ids[fold])
            print(audit_line(fold, labeller.audits[fold]), flush=True)
    return dict(labeller.audits)


def _source_folds(source: SourceEnsemble, folds: list[int]) -> list[int]:
    missing = [f for f in folds if f not in source.members]
    if missing:
        raise SaltError(f"{source.key} has no members of fold(s) {missing} (it covers folds "
                        f"{sorted(source.fold_members())}): fold k's labels need fold k's own members")
    return folds


def _label(source: SourceEnsemble, cfg: ExperimentConfig, run_id: str, cache: Path,
           device: str) -> tuple[PseudoLabels, dict[int, dict[str, float]]]:
    """Every source fold's labels (and the full-data labels), and each fold's audit on its validation tiles."""
    from salt_exp.pseudo.labels import make_labels

    labeller, data, tile_fold, val_ids = _labeller(source, cfg, cache)
    folds = make_labels(source, labeller, val_ids, cache, device)
    for fold, fl in folds.items():
        ignored = (f" ({fl.ignored_pixels / max(fl.kept_nonempty * fl.masks[0].size, 1):.1%} of their pixels "
                   "left out of the loss: ignore_band)") if cfg.pseudo.ignore_band else ""
        print(f"[pseudo] fold {C.fold_label(fold)}: kept {fl.kept_empty} empty + {fl.kept_nonempty} non-empty{ignored} "
              f"of {len(data.test)} test tiles; " + calibration_line(labeller.calibration.get(fold)), flush=True)
        if fold in labeller.audits:
            print(audit_line(fold, labeller.audits[fold]), flush=True)
    n_train = {f: int((tile_fold != f).sum()) for f in folds}
    for fold, fl in folds.items():
        check_oversampling(fl, n_train[fold], cfg.pseudo, labeller.calibration.get(fold))
    meta = {"ensemble": source.key, "ensemble_run": source.version.ensemble_run, "round": str(source.round + 1),
            "pseudo_run": run_id, "rules": ",".join(source.rules) or "none",
            **{k: str(getattr(cfg.pseudo, k)) for k in CONFIDENCE_KEYS}}
    return PseudoLabels(folds=folds, source=meta), dict(labeller.audits)


def calibration_line(cal: dict | None) -> str:
    """What other confidence settings would keep (see ``confidence.calibration``), in one line."""
    if not cal:
        return ""
    empty = ", ".join(f"{t:g}: {n}" for t, n in cal["empty"].items())
    nonempty = ", ".join(f"{t:g}: {n}" for t, n in cal["nonempty"].items())
    line = f"kept empty by empty_max_prob {{{empty}}}; kept non-empty by min_confident_pixels {{{nonempty}}}"
    if cal.get("band"):
        line += "; by pixel_low-pixel_high {" + ", ".join(f"{b}: {n}" for b, n in cal["band"].items()) + "}"
    return line


def check_oversampling(fl, n_train: int, rules, cal: dict | None = None) -> None:
    """One-line SaltError when the round would draw each pseudo tile more than ``pseudo.max_oversampling`` times
    as often as a training tile (no kept tile at all is the extreme case), or when every kept tile is empty."""
    n = len(fl.ids)
    share = rules.share
    if share <= 0:
        return
    ratio = float("inf") if n == 0 or share >= 1 else (share / n) / ((1 - share) / max(n_train, 1))
    if ratio <= rules.max_oversampling:
        if n and not fl.kept_nonempty:
            raise SaltError(f"fold {C.fold_label(fl.fold)}: the confidence rules kept {n} test tiles, all empty, none "
                            "non-empty: the round would only teach 'empty'; widen the pixel band (pseudo.pixel_low / "
                            "pixel_high: a Lovasz-trained model's probabilities sit near 0.27 / 0.73) or lower "
                            "pseudo.min_confident_pixels" + (f" ({calibration_line(cal)})" if cal else ""))
        return
    limit = rules.max_oversampling * n / (n_train + rules.max_oversampling * n) if n else 0.0
    raise SaltError(f"fold {C.fold_label(fl.fold)}: the confidence rules kept {n} test tiles ({fl.kept_empty} empty, "
                    f"{fl.kept_nonempty} non-empty) beside {n_train} training tiles; at pseudo.share {share:g} each "
                    + (f"would be drawn {ratio:.0f}x as often as a training tile (pseudo.max_oversampling "
                       f"{rules.max_oversampling:g}): loosen pseudo.empty_max_prob / pseudo.min_confident_pixels or "
                       f"set pseudo.share <= {limit:.3f}" if n else "batch would need one: loosen the rules")
                    + (f" ({calibration_line(cal)})" if cal else ""))


def _log_labels(tracker: RunTracker, labels: PseudoLabels, audits: dict[int, dict[str, float]]) -> None:
    metrics = {}
    for fold, fl in labels.folds.items():
        k = C.fold_label(fold)
        metrics.update({f"fold{k}_{name}": value for name, value in fl.counts.items()})
        metrics[f"fold{k}_threshold"] = fl.threshold
        metrics[f"fold{k}_ignored_pixels"] = fl.ignored_pixels
        # the rules on fold k's validation tiles (confidence.audit); a share with nothing to count is not logged
        metrics.update({C.Metric.pseudo_audit(fold, name): value for name, value in audits.get(fold, {}).items()
                        if math.isfinite(value)})
    tracker.log_metrics(metrics, step=0)
    with temp_dir() as tmp:
        path = C.write_pseudo_labels(Path(tmp) / Path(C.PSEUDO_LABELS).name, labels)
        tracker.log_artifact(path, str(Path(C.PSEUDO_LABELS).parent))
    rows = list(labels.folds.values())
    tracker.log_table({"fold": [C.fold_label(fl.fold) for fl in rows],
                       **{name: [fl.counts[name] for fl in rows] for name in rows[0].counts},
                       "threshold": [fl.threshold for fl in rows],
                       "ignored_pixels": [fl.ignored_pixels for fl in rows]}, C.PSEUDO_COUNTS)
