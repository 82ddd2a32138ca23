"""Segmentation losses on LOGITS, and the deep-supervision composite.

Every loss takes ``logits (B, 1, H, W)`` and ``target (B, 1, H, W)`` float 0/1 and returns a scalar; with
``valid`` (B, 1, H, W) bool it counts only the valid pixels (an ignored pixel changes neither the loss nor any
gradient). Compute them on the 101x101 crop (``TileAdapter.crop``), never on padded tiles.

Ignored pixels come in the training masks themselves: a mask value with the :data:`IGNORE` bit set (2: label 0,
3: label 1) is a pixel whose label is unknown (a pseudo-labelled tile's uncertain pixels, ``pseudo.ignore_band``).
:class:`DeepSupervisionLoss` splits such a mask into the 0/1 label and the valid pixels; a tile is non-empty
for the classification head when its label has salt, ignored pixels included. Masks without the bit give exactly
the losses of plain 0/1 masks.

The Lovasz hinge is ported from Berman, Triki, Blaschko, "The Lovasz-Softmax loss: A tractable
surrogate for the optimization of the intersection-over-union measure in neural networks",
CVPR 2018, https://github.com/bermanmaxim/LovaszSoftmax (pytorch/lovasz_losses.py:
``lovasz_grad``, ``lovasz_hinge_flat``, ``per_image=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from salt_exp.errors import SaltError

if TYPE_CHECKING:
    from salt_exp.models.unet import SaltOutput

SegLoss = Callable[..., torch.Tensor]  # (logits, target, valid=None) -> scalar
IGNORE = 2  # the mask bit of a pixel the loss skips (its label, bit 0, still says what the tile holds)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses run in fp32 (or fp64) even under autocast: fp16 cumsums over 10^4 pixels lose integers."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted decreasingly.

    ``gt_sorted`` (P,) 0/1 labels in the order of decreasing errors. (Berman et al., lovasz_grad.)
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def _lovasz_flat(logits: torch.Tensor, labels: torch.Tensor, elu: bool) -> torch.Tensor:
    """One image: ``logits`` (P,), ``labels`` (P,) 0/1 -> scalar. (Berman et al., lovasz_hinge_flat.)"""
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    grad = lovasz_grad(labels[perm])
    # Hinge relu(e); the ELU+1 variant keeps a (smooth, positive) gradient for already-correct pixels.
    hinge = F.elu(errors_sorted) + 1.0 if elu else F.relu(errors_sorted)
    return torch.dot(hinge, grad)


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                 elu: bool = False) -> torch.Tensor:
    """Lovasz hinge averaged over images: (B, 1, H, W) logits, (B, 1, H, W) 0/1 target -> scalar. ``valid``: each
    image's hinge over its valid pixels only (an image without one adds 0)."""
    flat_logits = _at_least_fp32(logits).flatten(1)
    flat_target = target.flatten(1).to(flat_logits.dtype)
    if valid is None:
        losses = [_lovasz_flat(x, y, elu) for x, y in zip(flat_logits, flat_target, strict=True)]
    else:
        losses = [_lovasz_flat(x[v], y[v], elu) if bool(v.any()) else x.sum() * 0.0
                  for x, y, v in zip(flat_logits, flat_target, valid.flatten(1), strict=True)]
    return torch.stack(losses).mean()


def lovasz_elu(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Lovasz with ``elu(e) + 1`` in place of ``relu(e)`` (a variant used by top TGS teams)."""
    return lovasz_hinge(logits, target, valid, elu=True)


def symmetric_lovasz(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``(L(x, y) + L(-x, 1 - y)) / 2``: rewards IoU of the background as well as of the salt."""
    return 0.5 * (lovasz_hinge(logits, target, valid) + lovasz_hinge(-logits, 1.0 - target, valid))


def bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy on logits (over the valid pixels of the batch)."""
    logits = _at_least_fp32(logits)
    if valid is None:
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    weight = valid.to(logits.dtype)
    total = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), weight=weight, reduction="sum")
    return total / weight.sum().clamp_min(1.0)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
              smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2|p*y| + s) / (|p| + |y| + s)`` per image with p = sigmoid(logits) (on the valid pixels), averaged."""
    probs = torch.sigmoid(_at_least_fp32(logits)).flatten(1)
    target = target.flatten(1).to(probs.dtype)
    if valid is not None:
        weight = valid.flatten(1).to(probs.dtype)
        probs, target = probs * weight, target * weight
    intersection = (probs * target).sum(1)
    dice = (2.0 * intersection + smooth) / (probs.sum(1) + target.sum(1) + smooth)
    return (1.0 - dice).mean()


SEG_LOSSES: dict[str, SegLoss] = {
    "bce": bce,
    "lovasz": lovasz_hinge,
    "lovasz_elu": lovasz_elu,
    "lovasz_symmetric": symmetric_lovasz,
    "dice": soft_dice,
}


def build_seg_loss(terms: Mapping[str, float]) -> SegLoss:
    """Weighted sum of named losses, e.g. ``{"bce": 1.0, "lovasz": 0.5}`` -> ``loss(logits, target)``."""
    unknown = [name for name in terms if name not in SEG_LOSSES]
    if unknown:
        raise SaltError(f"unknown loss term {unknown[0]!r}; valid: {', '.join(SEG_LOSSES)}")
    if not terms:
        raise SaltError(f"no loss terms given; valid: {', '.join(SEG_LOSSES)}")
    weighted = [(SEG_LOSSES[name], float(weight)) for name, weight in terms.items()]

    def loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return sum(weight * fn(logits, target, valid) for fn, weight in weighted)

    return loss


class DeepSupervisionLoss:
    """Total loss over a SaltOutput (cropped to 101) and target masks (B, 1, H, W) 0/1 (or with the
    :data:`IGNORE` bit on pixels the segmentation losses skip).

    ``cls_weight * BCE(cls, mask non-empty) + seg_weight * seg_loss(seg on non-empty samples)
    + fused_weight * seg_loss(fused on all samples)``. Outputs without deep supervision (``seg`` and
    ``cls`` None) give ``fused_weight * seg_loss(fused)``. Returns ``(total, parts)``; ``parts``
    holds the unweighted, detached terms.
    """

    def __init__(
        self,
        seg_terms: Mapping[str, float],
        cls_weight: float = 0.05,
        seg_weight: float = 0.1,
        fused_weight: float = 1.0,
    ) -> None:
        self.seg_loss, self.terms = build_seg_loss(seg_terms), dict(seg_terms)
        self.cls_weight, self.seg_weight, self.fused_weight = cls_weight, seg_weight, fused_weight

    def __call__(self, output: SaltOutput, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target, valid = split_ignore(target)
        fused = self.seg_loss(output.fused, target, valid)
        total, parts = self.fused_weight * fused, {"fused": fused}
        non_empty = target.flatten(1).amax(1) > 0.5  # (B,) bool: the tile has salt
        if output.cls is not None:
            cls = bce(output.cls, non_empty.to(output.cls.dtype))
            total, parts["cls"] = total + self.cls_weight * cls, cls
        if output.seg is not None:
            if bool(non_empty.any()):  # a CPU-GPU sync point; boolean indexing syncs anyway
                seg = self.seg_loss(output.seg[non_empty], target[non_empty],
                                    None if valid is None else valid[non_empty])
            else:  # keep seg in the graph so backward and DDP see every parameter used
                seg = output.seg.sum() * 0.0
            total, parts["seg"] = total + self.seg_weight * seg, seg
        return total, {name: value.detach() for name, value in parts.items()}


def split_ignore(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(0/1 label, valid pixels or None) of a training mask whose pixels may carry the :data:`IGNORE` bit; a mask
    without it comes back as it is with None (one check of its maximum)."""
    if not bool(target.max() >= IGNORE):  # a CPU-GPU sync point, once per batch
        return target, None
    bits = target.to(torch.uint8)
    return (bits & 1).to(target.dtype), (bits & IGNORE) == 0
