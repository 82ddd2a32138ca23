"""Mosaic-neighbour post-processing rules for predicted masks (the reference TGS solutions' mosaic rules), each switchable by name.

The real annotation was drawn at mosaic scale (a tile wholly inside salt is labelled empty, caps, vertical
flanks continued down); these rules copy its logic onto
predictions. Every rule is a pure function ``(pred, ctx) -> new pred`` over binary masks
(N, 101, 101) bool; decisions are taken on the rule's *input*, so a rule does not depend on the order
in which it visits the tiles. Tiles without mosaic neighbours are never touched (except by ``blank``,
which needs no neighbours).

Rules (applied by :func:`apply_rules` in this fixed order, whatever order they are named in):

- ``blank``: blank tiles (one constant grey value) are predicted empty; all such real tiles are empty.
- ``vertical``: a tile whose last ``VERTICAL_ROWS`` rows all equal its last row, with that row neither
  empty nor full, has a near-vertical boundary; every tile below it in the column (contiguous: it stops
  at a gap) gets that row repeated. Tiles below are overwritten whatever they predicted (the annotation
  overwrote the true shape with the continued line); a lower source tile met on the way is overwritten
  too, so the top-most source of a run wins.
- ``sandwich``: a tile whose neighbour above has a non-empty last row and whose neighbour below has a
  non-empty first row gets the last row of the tile above repeated, when that has more salt pixels than
  its own prediction (replacement, not union).
- ``cap``: when a tile's last row is fully salt, the tiles below it in the column (contiguous) are
  predicted empty (salt interiors are labelled empty). Last, so that it overrides rows the other rules
  may have grown into a salt interior.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from salt_exp.data.kaggle import blank_images
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.errors import SaltError
from salt_exp.metrics import image_scores

VERTICAL_ROWS = 30  # the reference's window for "the boundary is vertical here"


@dataclass(frozen=True)
class RuleContext:
    """What the rules see besides the masks: ids (N,), images (N, 101, 101) or None, the mosaic index."""

    ids: list[str]
    images: np.ndarray | None
    index: MosaicIndex

    def row(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.ids)}


Rule = Callable[[np.ndarray, RuleContext], np.ndarray]


def blank_rule(pred: np.ndarray, ctx: RuleContext) -> np.ndarray:
    """Empty prediction for blank tiles (a single grey value)."""
    if ctx.images is None:
        raise SaltError("rule 'blank' needs the tile images; pass images=")
    out = pred.copy()
    out[blank_images(ctx.images)] = False
    return out


def vertical_row(mask: np.ndarray) -> np.ndarray | None:
    """The last row when the bottom VERTICAL_ROWS rows all equal it and it is neither empty nor full."""
    last = mask[-1]
    if not last.any() or last.all() or not (mask[-VERTICAL_ROWS:] == last).all():
        return None
    return last


def _carry_down(pred: np.ndarray, ctx: RuleContext, source: Callable[[np.ndarray], np.ndarray | None]) -> np.ndarray:
    """Walk every contiguous mosaic column top to bottom; once ``source(tile)`` gives a row, every
    tile below gets that row repeated, until a tile we hold no prediction for breaks the column."""
    row, out = ctx.row(), pred.copy()
    for column in ctx.index.columns():
        line = None
        for tile in column:
            i = row.get(tile)
            if i is None:  # a tile of the mosaic we hold no prediction for: nothing carries across it
                line = None
            elif line is not None:
                out[i] = line
            else:
                line = source(pred[i])
    return out


def vertical_rule(pred: np.ndarray, ctx: RuleContext) -> np.ndarray:
    """Continue near-vertical boundaries down the contiguous mosaic column (see module docstring)."""
    return _carry_down(pred, ctx, vertical_row)


def sandwich_rule(pred: np.ndarray, ctx: RuleContext) -> np.ndarray:
    """Fill tiles between salt above and salt below with the last row of the tile above."""
    row, out = ctx.row(), pred.copy()
    for tile, i in row.items():
        up, down = row.get(ctx.index.above(tile)), row.get(ctx.index.below(tile))
        if up is None or down is None or not pred[up][-1].any() or not pred[down][0].any():
            continue
        if int(pred[up][-1].sum()) * pred.shape[1] > int(pred[i].sum()):
            out[i] = pred[up][-1]
    return out


def cap_rule(pred: np.ndarray, ctx: RuleContext) -> np.ndarray:
    """Empty every tile below a tile whose last row is fully salt (contiguous column)."""
    return _carry_down(pred, ctx, lambda mask: np.zeros_like(mask[-1]) if mask[-1].all() else None)


RULES: dict[str, Rule] = {"blank": blank_rule, "vertical": vertical_rule, "sandwich": sandwich_rule, "cap": cap_rule}
RULE_ORDER: tuple[str, ...] = tuple(RULES)  # the fixed order apply_rules uses


def get_rule(name: str) -> Rule:
    """The rule registered as ``name``; SaltError listing the valid names otherwise."""
    if name not in RULES:
        raise SaltError(f"unknown post-processing rule {name!r}; valid rules: {', '.join(RULE_ORDER)}")
    return RULES[name]


def _as_array(pred: np.ndarray | Mapping[str, np.ndarray], ids: Sequence[str]) -> np.ndarray:
    if isinstance(pred, Mapping):
        return np.stack([np.asarray(pred[i]) != 0 for i in ids]) if len(ids) else np.zeros((0, 101, 101), bool)
    pred = np.asarray(pred)
    if pred.ndim != 3 or len(pred) != len(ids):
        raise SaltError(f"predictions must be (N, H, W) for {len(ids)} ids, got shape {pred.shape}")
    return pred != 0


def apply_rules(
    pred: np.ndarray | Mapping[str, np.ndarray],
    ids: Sequence[str],
    images: np.ndarray | None,
    index: MosaicIndex,
    *,
    rules: Sequence[str],
) -> np.ndarray | dict[str, np.ndarray]:
    """Apply the named rules in RULE_ORDER to binary masks (nonzero = salt).

    pred: (N, 101, 101) masks in the order of ``ids``, or a dict id -> (101, 101) mask (then ``ids``
    says which tiles take part). Returns the same kind: an (N, 101, 101) array of pred's dtype, or a
    new dict (ids not listed are copied unchanged).
    """
    for name in rules:
        get_rule(name)
    ids = [str(i) for i in ids]
    masks = _as_array(pred, ids)
    ctx = RuleContext(ids, images, index)
    for name in RULE_ORDER:
        if name in rules:
            masks = RULES[name](masks, ctx)
    if isinstance(pred, Mapping):
        out = dict(pred)
        out.update({i: masks[k].astype(np.asarray(pred[i]).dtype) for k, i in enumerate(ids)})
        return out
    return masks.astype(np.asarray(pred).dtype)


def measure_rules(
    pred: np.ndarray | Mapping[str, np.ndarray],
    truth: np.ndarray | Mapping[str, np.ndarray],
    ids: Sequence[str],
    images: np.ndarray | None,
    *,
    index: MosaicIndex,
    rules: Sequence[str],
) -> list[dict]:
    """Score each rule alone against the same baseline, then all of them together (last row).

    Returns dicts rule, score_before, score_after, gain (after - before, competition metric),
    tiles_changed; the combined row is named by the rules joined with ``+`` in RULE_ORDER.
    """
    ids = [str(i) for i in ids]
    base, truth = _as_array(pred, ids), _as_array(truth, ids)
    before = float(image_scores(base, truth).mean()) if len(ids) else float("nan")
    ordered = [r for r in RULE_ORDER if r in rules]
    for name in rules:
        get_rule(name)
    runs = [[r] for r in ordered] + ([ordered] if len(ordered) > 1 else [])
    rows = []
    for run in runs:
        after = apply_rules(base, ids, images, index, rules=run)
        score = float(image_scores(after, truth).mean()) if len(ids) else float("nan")
        changed = int((after != base).reshape(len(ids), -1).any(axis=1).sum())
        rows.append({"rule": "+".join(run), "score_before": before, "score_after": score,
                     "gain": score - before, "tiles_changed": changed})
    return rows
