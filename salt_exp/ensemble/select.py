"""Pick ensemble members from the MLflow registry by their version tags.

Tie rule: within a (model, fold), versions are ranked by ``val_map`` (higher first); equal
``val_map`` keeps the earlier registered version (lower version number, i.e. the earlier cycle
or trial), so re-running a selection never changes its answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from salt_exp.errors import SaltError
from salt_exp.tracking import registry_versions

REQUIRED_TAGS = ("fold", "cycle", "val_map", "oof", "weights")


@dataclass(frozen=True)
class Member:
    """One registered snapshot: where its weights and out-of-fold probabilities live."""

    model: str
    version: str
    run_id: str
    fold: int
    cycle: int
    val_map: float
    val_best_thr: float
    weights: str  # artifact path inside run_id
    oof: str  # artifact path inside run_id
    encoder: str
    trial: str

    @property
    def key(self) -> str:
        return f"{self.model}/v{self.version}"


def registered_members(model: str) -> list[Member]:
    """All versions of ``model`` carrying the snapshot tags; SaltError when there are none."""
    rows = [r for r in registry_versions(model) if all(t in r["tags"] for t in REQUIRED_TAGS)]
    if not rows:
        raise SaltError(f"registered model {model!r} has no snapshot versions (train a fold run of that study first)")
    return [
        Member(model, r["version"], r["run_id"], int(r["tags"]["fold"]), int(r["tags"]["cycle"]),
               float(r["tags"]["val_map"]), float(r["tags"].get("val_best_thr", 0.5)), r["tags"]["weights"],
               r["tags"]["oof"], r["tags"].get("encoder", "?"), r["tags"].get("trial", "none"))
        for r in rows
    ]


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


def select_members(models: Sequence[str], top_k: int) -> dict[int, list[Member]]:
    """Members of several registered models (pipelines), combined per fold: sound because folds are shared."""
    members = [m for name in models for m in registered_members(name)]
    chosen = select_top(members, top_k)
    for name in models:
        folds = {m.fold for m in members if m.model == name}
        if folds != set(chosen):
            raise SaltError(f"registered model {name!r} covers folds {sorted(folds)} but the ensemble has {sorted(chosen)}; "
                            "train the missing folds or leave that model out")
    return chosen
