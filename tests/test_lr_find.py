from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from salt_exp.train.lr_find import LRFindResult, lr_range_test, plot_lr_find, suggest_lr


def tiny_problem(seed: int = 0):
    """A small regression net with BatchNorm (buffers must be restored too) and a few batches."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    true_w = torch.randn(8, 1)
    batches = []
    for _ in range(5):
        x = torch.randn(32, 8)
        batches.append((x, x @ true_w))

    def loss_step(batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    return model, loss_step, batches


def warmed_optimizer(model, loss_step, batches):
    """SGD with momentum buffers already populated, so restoring its state means something."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for batch in batches[:2]:
        opt.zero_grad()
        loss_step(batch).backward()
        opt.step()
    return opt


def test_sweep_diverges_suggests_in_range_and_restores_everything():
    model, loss_step, batches = tiny_problem()
    opt = warmed_optimizer(model, loss_step, batches)
    model.eval()
    model_before = copy.deepcopy(model.state_dict())
    opt_before = copy.deepcopy(opt.state_dict())

    result = lr_range_test(model, loss_step, batches, opt, start_lr=1e-4, end_lr=100.0, steps=80)

    assert result.stopped_early and ("x best" in result.reason or "loss became" in result.reason)
    n = len(result.lrs)
    assert 10 < n < 80 and len(result.losses) == len(result.raw_losses) == n
    assert result.lrs[0] == pytest.approx(1e-4)
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, math.log(1e6) / 79)  # exponential sweep
    best = int(np.argmin(result.losses))
    assert 1e-4 <= result.suggestion <= result.lrs[best] < result.lrs[-1]

    for key, value in model.state_dict().items():
        assert torch.equal(value, model_before[key]), key  # weights and BatchNorm buffers, bit for bit
    assert not model.training
    after = opt.state_dict()
    assert after["param_groups"] == opt_before["param_groups"]
    for idx, state in opt_before["state"].items():
        assert torch.equal(after["state"][idx]["momentum_buffer"], state["momentum_buffer"])


def test_full_sweep_without_divergence_has_steps_points():
    model, loss_step, batches = tiny_problem(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    result = lr_range_test(model, loss_step, batches, opt, start_lr=1e-5, end_lr=1e-2, steps=30, smooth=0.9)
    assert not result.stopped_early and result.reason == "completed 30 steps"
    assert len(result.lrs) == 30 and result.lrs[-1] == pytest.approx(1e-2)  # batches were cycled
    assert 1e-5 <= result.suggestion <= 1e-2


def test_smoothed_losses_are_a_bias_corrected_ema():
    model, loss_step, batches = tiny_problem(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    r = lr_range_test(model, loss_step, batches, opt, start_lr=1e-6, end_lr=1e-5, steps=5, smooth=0.5)
    assert r.losses[0] == pytest.approx(r.raw_losses[0])
    expected = (0.5 * 0.5 * r.raw_losses[0] + 0.5 * r.raw_losses[1]) / (1 - 0.25)
    assert r.losses[1] == pytest.approx(expected)


def test_nan_loss_stops_and_still_restores():
    model, loss_step, batches = tiny_problem(3)
    before = copy.deepcopy(model.state_dict())
    calls = []

    def flaky(batch):
        calls.append(1)
        loss = loss_step(batch)
        return loss * float("nan") if len(calls) > 12 else loss

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    result = lr_range_test(model, flaky, batches, opt, start_lr=1e-4, end_lr=1e-2, steps=40)
    assert result.stopped_early and "nan" in result.reason and len(result.lrs) == 12
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_errors_restore_state_and_empty_batches_fail():
    model, loss_step, batches = tiny_problem(4)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def broken(batch):
        loss = loss_step(batch)
        if len(broken.calls) == 3:
            raise RuntimeError("boom")
        broken.calls.append(1)
        return loss

    broken.calls = []
    with pytest.raises(RuntimeError, match="boom"):
        lr_range_test(model, broken, batches, opt, start_lr=1e-1, end_lr=1.0, steps=10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no points"):
        lr_range_test(model, loss_step, [], opt, start_lr=1e-4, end_lr=1.0, steps=10)


def test_suggestion_is_the_steepest_descent_of_a_known_curve():
    lrs = list(np.logspace(-5, 0, 100))
    losses = list(1.0 - np.tanh(2.0 * (np.log10(lrs) + 2.0)))  # steepest at lr = 1e-2
    assert suggest_lr(lrs, losses) == pytest.approx(1e-2, rel=0.15)
    flat = [1.0] * 100
    assert suggest_lr(lrs, flat) == pytest.approx(max(lrs[0], lrs[0] / 10))  # min at start: fallback
    rising = list(np.linspace(1.0, 2.0, 100))
    assert suggest_lr(lrs, rising) == lrs[0]


def test_flat_curve_does_not_suggest_its_far_left_noise():
    # a short sweep of a tiny model: flat with an early dip (EMA warm-up), lowest near lr = 0.5
    lrs = list(np.logspace(-5, 0, 20))
    losses = [1.3746, 1.3594, 1.3595, 1.3648, 1.3613, 1.3619, 1.3612, 1.3636, 1.3630, 1.3629,
              1.3601, 1.3579, 1.3581, 1.3600, 1.3543, 1.3610, 1.3636, 1.3511, 1.3384, 1.3535]
    best = lrs[int(np.argmin(losses))]
    assert best / 100 <= suggest_lr(lrs, losses) <= best


def test_plot_writes_an_image(tmp_path):
    lrs = list(np.logspace(-5, 0, 50))
    losses = list(1.0 - np.tanh(np.log10(lrs) + 2.0))
    result = LRFindResult(lrs=lrs, losses=losses, raw_losses=losses, suggestion=suggest_lr(lrs, losses), stopped_early=True,
                          reason="diverged")
    path = plot_lr_find(result, tmp_path / "plots" / "lr_find.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert list((tmp_path / "plots").iterdir()) == [path]  # no temporary files left behind


def test_a_grad_scaler_scales_the_sweep_and_is_restored():
    """Under CUDA fp16 autocast the sweep steps through the run's GradScaler, as training does (tested with
    the CPU scaler: same code path); the scaler's state is put back with the model's."""
    model, loss_step, batches = tiny_problem(2)
    opt = warmed_optimizer(model, loss_step, batches)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=1)
    seen = []

    def step(batch):
        seen.append(scaler.get_scale())
        return loss_step(batch)

    plain = lr_range_test(model, loss_step, batches, opt, start_lr=1e-4, end_lr=1e-2, steps=6)
    scaled = lr_range_test(model, step, batches, opt, start_lr=1e-4, end_lr=1e-2, steps=6, scaler=scaler)
    assert seen[:3] == [16.0, 32.0, 64.0]  # scale() and update() ran every step (growth after each finite step)
    assert scaler.get_scale() == 16.0  # restored
    np.testing.assert_allclose(scaled.raw_losses, plain.raw_losses, rtol=1e-5)  # scaling cancels in fp32
