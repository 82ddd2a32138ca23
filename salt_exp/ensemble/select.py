"""Pick ensemble members from the MLflow registry by their version tags (``contract.SnapshotVersion``).

Tie rule: within a (model, fold), versions are ranked by ``val_map`` (higher first); equal
``val_map`` keeps the earlier registered version (lower version number, i.e. the earlier cycle
or trial), so re-running a selection never changes its answer.

Full-data fits (``fold=all``) have no val_map: they are never fold members; :func:`select_full_fits`
takes the ``top_k`` cycles of each full-fit run in the order its cv fold runs ranked them (the run's
``full_fit_cycle_rank`` param), latest cycles first where a run has none.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from salt_exp.contract import SnapshotVersion
from salt_exp.errors import SaltError
from salt_exp.tracking import snapshot_versions

Member = SnapshotVersion  # an ensemble member is a registered snapshot


def registered_members(model: str) -> list[Member]:
    """All versions of ``model`` carrying the snapshot tags; SaltError when there are none."""
    members = snapshot_versions(model)
    if not members:
        raise SaltError(f"registered model {model!r} has no snapshot versions (train a fold run of that study first)")
    return members


def select_top(members: Sequence[Member], top_k: int) -> dict[int, list[Member]]:
    """Per fold, the ``top_k`` best versions of each model (see the module's tie rule), all models together."""
    if top_k < 1:
        raise SaltError(f"--top-cycles must be >= 1, got {top_k}")
    groups: dict[tuple[str, int], list[Member]] = defaultdict(list)
    for m in members:
        groups[(m.model, m.fold)].append(m)
    chosen: dict[int, list[Member]] = defaultdict(list)
    for (_, fold), group in sorted(groups.items()):
        chosen[fold].extend(sorted(group, key=lambda m: (-m.val_map, int(m.version)))[:top_k])
    return dict(sorted(chosen.items()))


def select_members(models: Sequence[str], top_k: int, *, swa: str = "include",
                   folds: Sequence[int] = ()) -> dict[int, list[Member]]:
    """Members of several registered models (pipelines), combined per fold: sound because folds are shared.
    ``swa="exclude"`` leaves SWA snapshots out; included, they compete with the cycles on val_map. ``folds``:
    only those folds (each must be there)."""
    members = [m for name in models for m in registered_members(name) if not m.full_fit
               and not (swa == "exclude" and m.swa) and (not folds or m.fold in folds)]
    missing = sorted(set(folds) - {m.fold for m in members})
    if missing:
        raise SaltError(f"--folds: registered model(s) {', '.join(models)} hold no snapshot of fold(s) "
                        f"{', '.join(map(str, missing))}")
    if not members:
        raise SaltError(f"registered model(s) {', '.join(models)} hold only full-data fits: an ensemble needs fold "
                        "snapshots (their out-of-fold predictions choose the threshold and the rules)")
    chosen = select_top(members, top_k)
    for name in models:
        folds = {m.fold for m in members if m.model == name}
        if folds != set(chosen):
            raise SaltError(f"registered model {name!r} covers folds {sorted(folds)} but the ensemble has {sorted(chosen)}; "
                            "train the missing folds or leave that model out")
    return chosen


def select_full_fits(models: Sequence[str], top_k: int) -> list[Member]:
    """The ``top_k`` cycles of every full-data fit run of ``models`` (see the module's rule), runs in registry order."""
    from salt_exp.full_fit import FULL_FIT_CYCLE_RANK
    from salt_exp.tracking import run_summary

    runs: dict[str, list[Member]] = defaultdict(list)
    for name in models:
        for m in snapshot_versions(name):
            if m.full_fit:
                runs[m.run_id].append(m)
    chosen = []
    for run_id, versions in sorted(runs.items(), key=lambda kv: min(int(v.version) for v in kv[1])):
        rank = run_summary(run_id).params.get(FULL_FIT_CYCLE_RANK, "")
        order = [int(c) for c in rank.split(",") if c.strip()] or sorted((v.cycle for v in versions), reverse=True)
        by_cycle = {v.cycle: v for v in versions}
        chosen.extend([by_cycle[c] for c in order if c in by_cycle][:top_k])
    return chosen
