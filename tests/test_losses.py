"""Losses: Lovasz against a brute-force Lovasz extension, gradcheck, minima, deep supervision."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from salt_exp.errors import SaltError
from salt_exp.losses import (
    IGNORE,
    SEG_LOSSES,
    DeepSupervisionLoss,
    bce,
    build_seg_loss,
    lovasz_elu,
    lovasz_hinge,
    soft_dice,
    symmetric_lovasz,
)
from salt_exp.models import SaltOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def jaccard_loss_of_set(mistakes: frozenset[int], positives: frozenset[int]) -> float:
    """Delta_J(M) = |M| / |positives U M|: the Jaccard loss when the pixels M are mispredicted."""
    union = positives | mistakes
    return len(mistakes) / len(union) if union else 0.0


def brute_force_lovasz(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Lovasz extension of Delta_J at the hinge errors, from the definition, by enumeration.

    For a submodular set function (Delta_J is, Berman et al. 2018) the Lovasz extension at m >= 0 is
    the maximum over all orderings pi of sum_i m_pi(i) (Delta(S_i) - Delta(S_{i-1})), S_i the first
    i elements: no sorting is used, every permutation is tried.
    """
    x, y = logits.flatten().tolist(), labels.flatten().tolist()
    m = [max(0.0, 1.0 - xi * (2 * yi - 1)) for xi, yi in zip(x, y, strict=True)]
    positives = frozenset(i for i, yi in enumerate(y) if yi > 0.5)
    best = -float("inf")
    for order in itertools.permutations(range(len(m))):
        total, prev, chosen = 0.0, 0.0, set()
        for i in order:
            chosen.add(i)
            cur = jaccard_loss_of_set(frozenset(chosen), positives)
            total += m[i] * (cur - prev)
            prev = cur
        best = max(best, total)
    return best


def test_lovasz_equals_brute_force_extension() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        logits = torch.randn(3, 1, 2, 3, generator=gen, dtype=torch.float64) * 1.5
        target = (torch.rand(3, 1, 2, 3, generator=gen) > 0.5).double()
        target[0] = 0.0  # an empty image: per-image Lovasz is still defined
        expected = sum(brute_force_lovasz(logits[b], target[b]) for b in range(3)) / 3
        assert lovasz_hinge(logits, target).item() == pytest.approx(expected, abs=1e-12)


def _away_from_kinks(shape: tuple[int, ...], target: torch.Tensor) -> torch.Tensor:
    """Logits whose hinge errors are distinct and not near 0, so the loss is differentiable there."""
    n = target.numel()
    errors = torch.linspace(-1.5, 2.5, n, dtype=torch.float64)[torch.randperm(n)] + 0.013
    signs = 2 * target.flatten() - 1
    return ((1 - errors) * signs).reshape(shape)


@pytest.mark.parametrize("loss", [lovasz_hinge, lovasz_elu, symmetric_lovasz, soft_dice, bce])
def test_gradcheck_double(loss) -> None:
    torch.manual_seed(1)
    target = (torch.rand(2, 1, 4, 5) > 0.5).double()
    logits = _away_from_kinks((2, 1, 4, 5), target).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "terms",
    [
        {"lovasz": 1.0},
        {"lovasz_elu": 1.0},
        {"lovasz_symmetric": 1.0},
        {"bce": 1.0},
        {"dice": 1.0},
        {"bce": 1.0, "lovasz": 0.5},
    ],
)
def test_perfect_prediction_is_the_minimum(terms) -> None:
    torch.manual_seed(2)
    loss = build_seg_loss(terms)
    target = torch.zeros(4, 1, 9, 9)
    target[1, :, 3:] = 1.0
    target[2, :, :, :5] = 1.0
    target[3] = 1.0
    perfect = 12.0 * (2 * target - 1)
    best = loss(perfect, target)
    flipped = perfect.clone()
    flipped[:, :, 4, 2:6] *= -1  # a few wrong pixels in every image
    for worse in (0.05 * perfect, flipped, -perfect):  # small margins, some errors, all wrong
        assert loss(worse, target) > best
    if set(terms) == {"lovasz"}:  # margin > 1 everywhere: the hinge is exactly 0, its minimum
        assert best.item() == pytest.approx(0.0)
        for scale in (0.5, 2.0):
            assert loss(perfect + scale * 6 * torch.randn_like(perfect), target) >= best


def test_symmetric_lovasz_is_symmetric() -> None:
    torch.manual_seed(3)
    x, y = torch.randn(2, 1, 6, 6), (torch.rand(2, 1, 6, 6) > 0.5).float()
    torch.testing.assert_close(symmetric_lovasz(x, y), symmetric_lovasz(-x, 1 - y))
    torch.testing.assert_close(symmetric_lovasz(x, y), (lovasz_hinge(x, y) + lovasz_hinge(-x, 1 - y)) / 2)


def test_elu_variant_bounds_relu_variant() -> None:
    torch.manual_seed(4)
    x, y = torch.randn(2, 1, 6, 6), (torch.rand(2, 1, 6, 6) > 0.5).float()
    assert lovasz_elu(x, y) >= lovasz_hinge(x, y)  # elu(e) + 1 >= relu(e) and the weights are >= 0


def test_bce_and_dice_sanity() -> None:
    x, y = torch.randn(2, 1, 5, 5), (torch.rand(2, 1, 5, 5) > 0.5).float()
    torch.testing.assert_close(bce(x, y), F.binary_cross_entropy_with_logits(x, y))
    target = torch.ones(1, 1, 5, 5)
    assert soft_dice(torch.full_like(target, 20.0), target) < 1e-6
    assert soft_dice(torch.full_like(target, -20.0), target) > 0.9
    assert soft_dice(torch.full_like(target, -20.0), torch.zeros_like(target)) < 1e-6  # empty, empty


def test_unknown_term_lists_valid_names() -> None:
    with pytest.raises(SaltError, match="valid: bce, lovasz, lovasz_elu, lovasz_symmetric, dice"):
        build_seg_loss({"focal": 1.0})


def _output(batch: int, requires_grad: bool = True) -> SaltOutput:
    torch.manual_seed(5)
    make = lambda *s: torch.randn(*s, requires_grad=requires_grad)  # noqa: E731
    return SaltOutput(fused=make(batch, 1, 101, 101), seg=make(batch, 1, 101, 101), cls=make(batch))


def test_deep_supervision_parts() -> None:
    out = _output(3)
    target = torch.zeros(3, 1, 101, 101)
    target[1, :, 50:] = 1.0
    loss_fn = DeepSupervisionLoss({"bce": 1.0, "lovasz": 0.5})
    total, parts = loss_fn(out, target)
    seg_fn = build_seg_loss({"bce": 1.0, "lovasz": 0.5})
    torch.testing.assert_close(parts["seg"], seg_fn(out.seg[1:2], target[1:2]).detach())
    torch.testing.assert_close(parts["cls"], bce(out.cls, torch.tensor([0.0, 1.0, 0.0])).detach())
    torch.testing.assert_close(total, 0.05 * parts["cls"] + 0.1 * parts["seg"] + parts["fused"])
    total.backward()
    assert out.seg.grad[0].abs().sum() == 0 and out.seg.grad[1].abs().sum() > 0  # seg: non-empty only


def test_all_empty_batch_is_finite_with_valid_graph() -> None:
    out = _output(2)
    total, parts = DeepSupervisionLoss({"bce": 1.0, "lovasz_symmetric": 0.5})(out, torch.zeros(2, 1, 101, 101))
    assert torch.isfinite(total) and parts["seg"].item() == 0.0
    total.backward()
    for tensor in (out.fused, out.seg, out.cls):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


def test_fused_only_output() -> None:
    out = SaltOutput(fused=torch.randn(2, 1, 101, 101, requires_grad=True))
    target = torch.zeros(2, 1, 101, 101)
    target[0, :, 60:] = 1.0
    total, parts = DeepSupervisionLoss({"lovasz": 1.0}, fused_weight=2.0)(out, target)
    assert set(parts) == {"fused"}
    torch.testing.assert_close(total, 2.0 * lovasz_hinge(out.fused, target))
    total.backward()


# ---------------------------------------------------------------- ignored pixels (pseudo.ignore_band)


@pytest.mark.parametrize("name", sorted(SEG_LOSSES))
def test_each_loss_over_valid_pixels_is_the_loss_of_those_pixels_alone(name: str) -> None:
    """With ``valid``, a loss equals the same loss over the valid pixels alone (per image for the per-image losses,
    over the batch for BCE), and the ignored pixels get no gradient whatever their logits."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 1, 12, 12, generator=g, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(3, 1, 12, 12, generator=g) > 0.6).double()
    valid = torch.rand(3, 1, 12, 12, generator=g) > 0.3
    fn = SEG_LOSSES[name]
    loss = fn(logits, target, valid)
    if name == "bce":
        expected = bce(logits[valid].view(1, 1, 1, -1), target[valid].view(1, 1, 1, -1))
    else:  # per image: each image's valid pixels as an image of their own
        expected = torch.stack([fn(logits[i][valid[i]].view(1, 1, 1, -1), target[i][valid[i]].view(1, 1, 1, -1))
                                for i in range(3)]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[~valid].abs().sum() == 0 and logits.grad[valid].abs().sum() > 0
    moved = logits.detach().clone()
    moved[~valid] = torch.randn(int((~valid).sum()), generator=g, dtype=torch.float64) * 10
    torch.testing.assert_close(fn(moved, target, valid), loss.detach())
    torch.testing.assert_close(fn(logits.detach(), target, torch.ones_like(valid)), fn(logits.detach(), target))


def test_deep_supervision_reads_the_ignore_bit_and_keeps_the_tile_non_empty() -> None:
    """A mask with the IGNORE bit: the seg losses skip those pixels, the label bit still says the tile has salt
    (the classification head sees it non-empty even where every salt pixel is ignored)."""
    out = _output(3)
    target = torch.zeros(3, 1, 101, 101)
    target[1, :, 50:] = 1.0
    target[2, :, 90:] = 1.0
    ignore = torch.zeros_like(target, dtype=torch.bool)
    ignore[1, :, 45:55] = True  # the boundary band of tile 1
    ignore[2, :, 85:] = True  # every salt pixel of tile 2
    loss_fn = DeepSupervisionLoss({"bce": 1.0, "lovasz": 0.5})
    total, parts = loss_fn(out, target + IGNORE * ignore.float())
    seg_fn, valid = build_seg_loss({"bce": 1.0, "lovasz": 0.5}), ~ignore
    torch.testing.assert_close(parts["fused"], seg_fn(out.fused, target, valid).detach())
    torch.testing.assert_close(parts["seg"], seg_fn(out.seg[1:], target[1:], valid[1:]).detach())
    torch.testing.assert_close(parts["cls"], bce(out.cls, torch.tensor([0.0, 1.0, 1.0])).detach())
    total.backward()
    assert out.fused.grad[ignore].abs().sum() == 0 and out.seg.grad[ignore].abs().sum() == 0
    assert out.fused.grad[~ignore].abs().sum() > 0
    # without the bit the masks are plain 0/1 masks: the same losses as before the bit existed
    again = _output(3)
    total0, parts0 = loss_fn(again, target)
    torch.testing.assert_close(parts0["fused"], seg_fn(again.fused, target).detach())
    assert not torch.equal(total0.detach(), total.detach())
