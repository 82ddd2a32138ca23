"""What an ensemble is built with: one frozen, engine-validated set of options and their defaults.

A study file's ``ensemble:`` section is checked as :class:`EnsembleOptions` (an unknown key or a wrong
type is the same one-line error as in a config file); ``salt-exp ensemble`` takes the same defaults.
Kept free of heavy imports so the study spec and the CLI can read it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from salt_exp.config.engine import from_mapping, num


@dataclass(frozen=True)
class EnsembleOptions:
    top_cycles: int = num(2, ge=1)  # snapshots per fold and model, best val_map first
    # greedy: per fold, a candidate (of those top_cycles) joins only when it raises the fold's OOF score (forward
    # selection, best val_map first); top: every one of the top_cycles
    selection: Literal["greedy", "top"] = "greedy"
    threshold: float | Literal["search"] = "search"  # "search": per fold, on its out-of-fold predictions
    postprocess: str = "auto"  # auto (rules with a positive OOF gain) | none | comma list of rules
    report: bool = False  # after the ensemble: a mosaic PNG, an evolution GIF and the error-analysis page
    # full-data fits (`salt-exp cv --full-fit`) registered in the models: include = one more group beside the
    # folds in the test prediction (the OOF figures are the folds' alone: a full fit has no OOF); only = the
    # test prediction is the full fits' alone, at their cv threshold; exclude = folds only
    full_fit: Literal["include", "exclude", "only"] = "include"
    # SWA snapshots (`salt-exp swa`): include = they compete with the cycle snapshots on val_map; exclude = never
    swa: Literal["include", "exclude"] = "include"
    # the members' OOF probabilities with the h-flip TTA of the test prediction (each member predicts its
    # validation tiles again): threshold and rules are chosen on what is deployed; off = the stored, one-view OOF
    oof_tta: bool = True
    # the rules also read the test tiles' predictions as neighbours (real mosaics mix train and test tiles)
    test_context: bool = True
    # jigsaw seam check: vertical links whose image edges do not continue (cost 1 - correlation above this) are
    # not carried across by the rules; 2.0 (the largest cost) switches it off
    seam_max_cost: float = num(0.5, ge=0.0, le=2.0)


def ensemble_options(raw: Mapping[str, Any], where: str, prefix: str = "") -> EnsembleOptions:
    """``raw`` (e.g. a study file's ``ensemble:`` mapping, ``prefix="ensemble."``) checked into options."""
    return from_mapping(raw, EnsembleOptions, where, prefix)
