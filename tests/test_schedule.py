from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salt_exp.config import ScheduleConfig
from salt_exp.train.schedule import CosineCycles, cosine_cycles


@settings(max_examples=60, deadline=None)
@given(
    max_lr=st.floats(1e-4, 1.0),
    ratio=st.floats(0.0, 0.9),
    cycles=st.integers(1, 4),
    steps=st.integers(2, 40),
)
def test_each_cycle_anneals_from_max_to_min(max_lr, ratio, cycles, steps):
    s = CosineCycles(max_lr=max_lr, min_lr=max_lr * ratio, cycles=cycles, steps_per_cycle=steps)
    for c in range(cycles):
        lrs = [s.lr_at(c * steps + i) for i in range(steps)]
        assert lrs[0] == pytest.approx(max_lr) and lrs[-1] == pytest.approx(max_lr * ratio)
        assert all(a >= b - 1e-15 for a, b in zip(lrs, lrs[1:], strict=False))  # monotone non-increasing
        assert all(max_lr * ratio - 1e-15 <= lr <= max_lr + 1e-15 for lr in lrs)
        assert s.cycle_of(c * steps) == c and s.is_cycle_end(c * steps + steps - 1)
        assert not s.is_cycle_end(c * steps + steps - 2) or steps == 1


def test_cosine_midpoint_and_restart_values():
    s = CosineCycles(max_lr=0.05, min_lr=0.001, cycles=3, steps_per_cycle=11)
    assert s.lr_at(5) == pytest.approx((0.05 + 0.001) / 2)  # halfway through a cycle
    assert s.lr_at(10) == pytest.approx(0.001) and s.lr_at(11) == pytest.approx(0.05)  # warm restart
    assert s.lr_at(22) == pytest.approx(0.05) and s.total_steps == 33
    assert [s.cycle_of(i) for i in (0, 10, 11, 21, 22, 32)] == [0, 0, 1, 1, 2, 2]


def test_warmup_rises_linearly_then_anneals_first_cycle_only():
    s = CosineCycles(max_lr=1.0, min_lr=0.0, cycles=2, steps_per_cycle=10, warmup_steps=4)
    assert [s.lr_at(i) for i in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    tail = [s.lr_at(i) for i in range(4, 10)]
    assert tail[-1] == pytest.approx(0.0) and all(a > b for a, b in zip(tail, tail[1:], strict=False))
    assert s.lr_at(10) == pytest.approx(1.0)  # the second cycle has no warm-up


def test_state_comes_from_the_step_alone():
    a = CosineCycles(max_lr=0.1, min_lr=0.0, cycles=3, steps_per_cycle=7, warmup_steps=2)
    b = CosineCycles(max_lr=0.1, min_lr=0.0, cycles=3, steps_per_cycle=7, warmup_steps=2)
    forward = [a.lr_at(i) for i in range(a.total_steps)]
    assert [b.lr_at(i) for i in reversed(range(b.total_steps))] == forward[::-1]


def test_apply_sets_every_group_with_its_scale():
    w1, w2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w1]}, {"params": [w2], "lr_scale": 0.1}], lr=123.0)
    s = CosineCycles(max_lr=0.5, min_lr=0.0, cycles=1, steps_per_cycle=5)
    assert s.apply(opt, 0) == pytest.approx(0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])


def test_invalid_arguments_and_steps_out_of_range():
    s = CosineCycles(max_lr=0.1, min_lr=0.01, cycles=2, steps_per_cycle=3)
    for step in (-1, 6):
        with pytest.raises(ValueError, match=r"outside the schedule \[0, 6\)"):
            s.lr_at(step)
    with pytest.raises(ValueError, match="min_lr <= max_lr"):
        CosineCycles(max_lr=0.1, min_lr=0.2, cycles=1, steps_per_cycle=3)
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineCycles(max_lr=0.1, min_lr=0.0, cycles=1, steps_per_cycle=3, warmup_steps=3)
    assert CosineCycles(max_lr=0.1, min_lr=0.0, cycles=2, steps_per_cycle=1).lr_at(1) == 0.1


def test_from_config_counts_batches():
    s = cosine_cycles(ScheduleConfig(cycles=2, cycle_epochs=3, min_lr=1e-4, warmup_epochs=1), 0.05, 10)
    assert (s.steps_per_cycle, s.warmup_steps, s.total_steps) == (30, 10, 60)
    assert s.lr_at(10) == pytest.approx(0.05) and s.lr_at(29) == pytest.approx(1e-4)
    assert cosine_cycles(ScheduleConfig(min_lr=0.1), 0.01, 5).min_lr == 0.01  # clamped to max_lr
