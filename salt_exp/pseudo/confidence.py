"""Which pseudo-labelled tiles a round keeps: confidence rules on an ensemble's test probabilities (pure numpy).

A tile is kept *empty* when its highest probability is below ``empty_max_prob`` and the post-processing rules
left its mask empty; *non-empty* when its post-processed mask is non-empty and at least ``min_confident_pixels``
of its pixels are below ``pixel_low`` or above ``pixel_high``; every other tile is dropped. With ``empty_share``
the empty tiles are capped at that share of the kept ones (the surplus dropped, least certain first). With
``ignore_band`` a kept non-empty tile's pixels inside the band are also marked for the loss to leave out
(:func:`ignore_map`), so a tile with uncertain boundaries teaches its confident pixels only.
"""

from __future__ import annotations

import numpy as np

from salt_exp.config import PseudoConfig

EMPTY, NONEMPTY, DROPPED = "empty", "nonempty", "dropped"


def confidence_verdicts(probs: np.ndarray, masks: np.ndarray, rules: PseudoConfig) -> np.ndarray:
    """(N,) str verdict per tile (EMPTY, NONEMPTY or DROPPED) from (N, H, W) probabilities in [0, 1] (not
    logits) and the (N, H, W) 0/1 masks made of them (thresholded and post-processed)."""
    p = np.asarray(probs, dtype=np.float32).reshape(len(probs), -1)
    empty = ~np.asarray(masks).reshape(len(masks), -1).astype(bool).any(axis=1)
    confident = ((p < rules.pixel_low) | (p > rules.pixel_high)).mean(axis=1) >= rules.min_confident_pixels
    out = np.full(len(p), DROPPED, dtype="<U8")
    top = p.max(axis=1)
    out[empty & (top < rules.empty_max_prob)] = EMPTY
    out[~empty & confident] = NONEMPTY
    if rules.empty_share is not None:  # keep at most empty_share of the kept tiles empty: the most certain ones
        n_nonempty = int((out == NONEMPTY).sum())
        room = int(np.floor(rules.empty_share / (1.0 - rules.empty_share) * n_nonempty + 1e-9))
        candidates = np.flatnonzero(out == EMPTY)
        if len(candidates) > room:
            order = candidates[np.argsort(top[candidates], kind="stable")]  # lowest highest-probability first
            out[order[room:]] = DROPPED
    return out


def ignore_map(probs: np.ndarray, masks: np.ndarray, verdicts: np.ndarray, threshold: float,
               rules: PseudoConfig) -> np.ndarray | None:
    """(N, H, W) bool: the pixels of NONEMPTY tiles whose probability lies in the band (``pixel_low`` <= p <=
    ``pixel_high``) and whose mask pixel is the thresholded probability's (a pixel the mosaic rules set is their
    verdict, not the model's guess, and stays); None without ``rules.ignore_band``."""
    if not rules.ignore_band:
        return None
    p = np.asarray(probs, dtype=np.float32)
    band = (p >= rules.pixel_low) & (p <= rules.pixel_high)
    model_says = np.asarray(masks).astype(bool) == (p > threshold)
    return band & model_says & (np.asarray(verdicts) == NONEMPTY)[:, None, None]


EMPTY_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)  # empty_max_prob values the calibration table counts
CONFIDENT_GRID = (0.8, 0.9, 0.95, 0.97, 0.99)  # min_confident_pixels values, at the configured pixel band
# pixel bands (pixel_low, pixel_high), at the configured min_confident_pixels: a model trained with the Lovasz hinge
# alone stops pushing at logit +-1, so its probabilities crowd near 0.27 / 0.73 and the default band keeps nothing
BAND_GRID = ((0.1, 0.9), (0.2, 0.8), (0.3, 0.7))


def calibration(probs: np.ndarray, masks: np.ndarray, rules: PseudoConfig) -> dict[str, dict[float, int]]:
    """How many tiles the rules would keep at other settings: ``empty`` kept-empty counts per ``empty_max_prob``,
    ``nonempty`` kept-non-empty counts per ``min_confident_pixels`` (at the configured pixel band) and ``band``
    kept-non-empty counts per pixel band (at the configured ``min_confident_pixels``), so a user sees how far to
    loosen them for their model's calibration."""
    p = np.asarray(probs, dtype=np.float32).reshape(len(probs), -1)
    empty = ~np.asarray(masks).reshape(len(masks), -1).astype(bool).any(axis=1)
    top = p.max(axis=1)
    share = ((p < rules.pixel_low) | (p > rules.pixel_high)).mean(axis=1)
    band = {}
    for low, high in BAND_GRID:
        inside = ((p < low) | (p > high)).mean(axis=1) >= rules.min_confident_pixels
        band[f"{low:g}-{high:g}"] = int((~empty & inside).sum())
    return {"empty": {t: int((empty & (top < t)).sum()) for t in EMPTY_GRID},
            "nonempty": {t: int((~empty & (share >= t)).sum()) for t in CONFIDENT_GRID}, "band": band}


def audit(probs: np.ndarray, masks: np.ndarray, truth: np.ndarray, threshold: float,
          rules: PseudoConfig) -> dict[str, float]:
    """The confidence rules applied where the truth is known (a fold's validation tiles, predicted the way its test
    tiles are labelled): how many tiles they keep and how right the kept labels are. Keys: ``tiles``,
    ``kept_empty`` / ``kept_nonempty``; ``empty_with_salt`` (kept empty, truth has salt) and
    ``nonempty_truly_empty`` (kept non-empty, truth empty): the wrong verdicts; ``kept_map`` / ``dropped_map`` /
    ``all_map``: the competition score of the kept, dropped and all tiles' masks; ``pixel_error``: the share of the
    kept tiles' trained pixels (the ignored band left out) that differ from the truth; ``ignored_share`` and
    ``ignored_error``: the share of kept non-empty tiles' pixels the band leaves out, and how many of those would
    have been wrong. A share with nothing to count is NaN."""
    from salt_exp.metrics import image_scores

    truth = np.asarray(truth).astype(bool)
    masks = np.asarray(masks).astype(bool)
    verdict = confidence_verdicts(probs, masks, rules)
    ignore = ignore_map(probs, masks, verdict, threshold, rules)
    ignore = np.zeros_like(masks) if ignore is None else ignore
    kept, empty, nonempty = verdict != DROPPED, verdict == EMPTY, verdict == NONEMPTY
    salt = truth.reshape(len(truth), -1).any(axis=1)
    scores = image_scores(masks, truth)
    wrong = masks != truth

    def mean(x: np.ndarray) -> float:
        return float(np.mean(x)) if np.size(x) else float("nan")

    trained = ~ignore[kept]
    return {"tiles": float(len(truth)), "kept_empty": float(empty.sum()), "kept_nonempty": float(nonempty.sum()),
            "empty_with_salt": float((empty & salt).sum()), "nonempty_truly_empty": float((nonempty & ~salt).sum()),
            "kept_map": mean(scores[kept]), "dropped_map": mean(scores[~kept]), "all_map": mean(scores),
            "pixel_error": mean(wrong[kept][trained]), "ignored_share": mean(ignore[nonempty]),
            "ignored_error": mean(wrong[ignore])}


AUDIT_KEYS = ("tiles", "kept_empty", "kept_nonempty", "empty_with_salt", "nonempty_truly_empty", "kept_map", "dropped_map",
              "all_map", "pixel_error", "ignored_share", "ignored_error")
AUDIT_LINE = ("{tiles:.0f} validation tiles: kept {kept_empty:.0f} empty ({empty_with_salt:.0f} with salt) + "
              "{kept_nonempty:.0f} non-empty ({nonempty_truly_empty:.0f} truly empty); mAP kept {kept_map:.4f}, "
              "dropped {dropped_map:.4f}, all {all_map:.4f}; {pixel_error:.1%} of the trained pixels wrong; ignored band "
              "{ignored_share:.1%} of the non-empty tiles' pixels, {ignored_error:.1%} of them wrong")
