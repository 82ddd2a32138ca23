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
    threshold: float | Literal["search"] = "search"  # "search": per fold, on its out-of-fold predictions
    postprocess: str = "auto"  # auto (rules with a positive OOF gain) | none | comma list of rules
    report: bool = False  # after the ensemble: a mosaic PNG, an evolution GIF and the error-analysis page
    # full-data fits (`salt-exp cv --full-fit`) registered in the models: include = one more group beside the
    # folds in the test prediction (the OOF figures are the folds' alone: a full fit has no OOF); only = the
    # test prediction is the full fits' alone, at their cv threshold; exclude = folds only
    full_fit: Literal["include", "exclude", "only"] = "include"


def ensemble_options(raw: Mapping[str, Any], where: str, prefix: str = "") -> EnsembleOptions:
    """``raw`` (e.g. a study file's ``ensemble:`` mapping, ``prefix="ensemble."``) checked into options."""
    return from_mapping(raw, EnsembleOptions, where, prefix)
