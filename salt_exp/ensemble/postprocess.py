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

Context. Besides the tiles being post-processed, the rules can read :class:`Neighbours`: tiles they see
but never change or return, e.g. the labelled train tiles (their truth) around a test tile, or the
test tiles' own predictions around an out-of-fold tile (real mosaics hold train and test tiles side by
side, so without them most columns break at the first test tile). Context tiles take part in every
rule like the others (a blank context tile is emptied before a column is walked), only the caller's
tiles come back.

Seams. ``broken`` lists vertical links (tile above, tile below) the rules must not carry anything
across: a column is cut there and a sandwich needs both of its links intact. The jigsaw seam check
(:func:`salt_exp.ensemble.jigsaw.untrusted_seams`) gives the links whose image edges do not continue.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from salt_exp.data.kaggle import blank_images
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.errors import SaltError
from salt_exp.metrics import image_scores

VERTICAL_ROWS = 30  # the reference's window for "the boundary is vertical here"


@dataclass(frozen=True)
class RuleContext:
    """What the rules see besides the masks: ids (N,), images (N, 101, 101) or None, the mosaic index and the
    vertical links (above, below) not to carry across."""

    ids: list[str]
    images: np.ndarray | None
    index: MosaicIndex
    broken: frozenset[tuple[str, str]] = frozenset()

    def row(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.ids)}

    def linked(self, above: str | None, below: str | None) -> bool:
        return above is not None and below is not None and (above, below) not in self.broken


@dataclass(frozen=True)
class Neighbours:
    """Tiles the rules read but never change or return: ids (K,), masks (K, 101, 101) 0/1 and their images
    (None: stand-ins that no rule reads as blank)."""

    ids: Sequence[str]
    masks: np.ndarray
    images: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.masks) or (self.images is not None and len(self.images) != len(self.ids)):
            raise SaltError(f"neighbour tiles: {len(self.ids)} ids but {len(self.masks)} masks"
                            + ("" if self.images is None else f" and {len(self.images)} images"))

    def __len__(self) -> int:
        return len(self.ids)

    def stand_in_images(self) -> np.ndarray:
        if self.images is not None:
            return np.asarray(self.images)
        out = np.zeros((len(self.ids), *np.asarray(self.masks).shape[1:]), np.uint8)
        out[:] = np.arange(out.shape[-1], dtype=np.uint8)[None, None, :]  # not one grey value: never blank
        return out

    def without(self, ids: Collection[str]) -> Neighbours:
        """These neighbours less ``ids`` (a caller's own tile wins over a neighbour with its id)."""
        drop = set(map(str, ids))
        keep = np.array([str(i) not in drop for i in self.ids], bool)
        images = None if self.images is None else np.asarray(self.images)[keep]
        return Neighbours([str(i) for i, k in zip(self.ids, keep, strict=True) if k], np.asarray(self.masks)[keep], images)

    @classmethod
    def join(cls, *parts: Neighbours | None) -> Neighbours | None:
        """Several neighbour sets as one (the first set holding an id keeps it); None when all are None."""
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return None
        out, seen = [], set()
        for p in parts:
            p = p.without(seen)
            seen.update(map(str, p.ids))
            out.append(p)
        return cls([str(i) for p in out for i in p.ids], np.concatenate([np.asarray(p.masks) for p in out]),
                   np.concatenate([p.stand_in_images() for p in out]))


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
        line, previous = None, None
        for tile in column:
            i = row.get(tile)
            if previous is not None and (previous, tile) in ctx.broken:  # an untrusted seam cuts the column
                line = None
            previous = tile
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
        above, below = ctx.index.above(tile), ctx.index.below(tile)
        if not (ctx.linked(above, tile) and ctx.linked(tile, below)):
            continue
        up, down = row.get(above), row.get(below)
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
    context: Neighbours | None = None,
    broken: Collection[tuple[str, str]] = (),
) -> np.ndarray | dict[str, np.ndarray]:
    """Apply the named rules in RULE_ORDER to binary masks (nonzero = salt).

    pred: (N, 101, 101) masks in the order of ``ids``, or a dict id -> (101, 101) mask (then ``ids``
    says which tiles take part). Returns the same kind: an (N, 101, 101) array of pred's dtype, or a
    new dict (ids not listed are copied unchanged). ``context``: neighbour tiles read, never returned;
    ``broken``: vertical links (above, below) nothing is carried across (see the module docstring).
    """
    for name in rules:
        get_rule(name)
    ids = [str(i) for i in ids]
    masks = _as_array(pred, ids)
    n = len(ids)
    context = context.without(ids) if context is not None else None
    if context is not None and len(context):
        if images is None and "blank" in rules:
            raise SaltError("rule 'blank' needs the tile images; pass images=")
        all_ids = [*ids, *map(str, context.ids)]
        masks = np.concatenate([masks, np.asarray(context.masks) != 0])
        images = None if images is None else np.concatenate([np.asarray(images), context.stand_in_images()])
    else:
        all_ids = ids
    ctx = RuleContext(all_ids, images, index, frozenset(broken))
    for name in RULE_ORDER:
        if name in rules:
            masks = RULES[name](masks, ctx)
    masks = masks[:n]
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
    context: Neighbours | None = None,
    broken: Collection[tuple[str, str]] = (),
) -> list[dict]:
    """Score each rule alone against the same baseline, then all of them together (last row); ``context`` and
    ``broken`` as in :func:`apply_rules` (only ``ids`` are scored).

    Returns dicts rule, score_before, score_after, gain (after - before, competition metric),
    tiles_changed; the combined row is named by the rules joined with ``+`` in RULE_ORDER.
    """
    ids = [str(i) for i in ids]
    base, truth = _as_array(pred, ids), _as_array(truth, ids)
    for name in rules:
        get_rule(name)
    return rule_gains(base, truth, rules,
                      lambda run: apply_rules(base, ids, images, index, rules=run, context=context, broken=broken))


def rule_gains(base: np.ndarray, truth: np.ndarray, rules: Sequence[str],
               apply: Callable[[list[str]], np.ndarray]) -> list[dict]:
    """The rows of :func:`measure_rules`: each rule alone, then all together (in RULE_ORDER), each run through
    ``apply(rules) -> masks`` and scored against the same baseline ``base``."""
    before = float(image_scores(base, truth).mean()) if len(base) else float("nan")
    ordered = [r for r in RULE_ORDER if r in rules]
    runs = [[r] for r in ordered] + ([ordered] if len(ordered) > 1 else [])
    rows = []
    for run in runs:
        after = apply(run)
        score = float(image_scores(after, truth).mean()) if len(base) else float("nan")
        changed = int((after != base).reshape(len(base), -1).any(axis=1).sum())
        rows.append({"rule": "+".join(run), "score_before": before, "score_after": score,
                     "gain": score - before, "tiles_changed": changed})
    return rows
