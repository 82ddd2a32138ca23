"""CPU precision choice (salt_exp.train.precision) and the bf16 paths of the engine, on a tiny UNet.

Timing decisions are made deterministic by injecting ``measure`` (images/s per candidate) and
``cpu`` (the capability); only the state-restore test runs the real timing loop.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from salt_exp.data.padding import TileAdapter
from salt_exp.errors import SaltError
from salt_exp.losses import DeepSupervisionLoss
from salt_exp.models import build_model
from salt_exp.train import cpu as cpu_module
from salt_exp.train import precision as P
from salt_exp.train.cpu import CpuInfo
from salt_exp.train.engine import (
    Runtime,
    choose_runtime,
    predict,
    train_epoch,
    train_step,
    training_step_fn,
)
from salt_exp.train.schedule import CosineCycles

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = (16, 16, 8, 8, 4)
AMX = CpuInfo(model="Test CPU with AMX", flags=("amx_bf16", "amx_tile", "avx512_bf16", "avx512f"),
              torch_capability="AVX512", torch_version=torch.__version__, mkldnn_bf16=True, cores=1)
NO_BF16 = CpuInfo(model="Test CPU without bf16", flags=("avx2",), torch_capability="AVX2",
                  torch_version=torch.__version__, mkldnn_bf16=False, cores=1)


def tiny_parts(seed: int = 0) -> tuple[torch.nn.Module, TileAdapter, DeepSupervisionLoss]:
    torch.manual_seed(seed)
    model = build_model("timm/resnet10t", decoder_channels=TINY, scse=True, hypercolumn=True, deep_supervision=True)
    loss = DeepSupervisionLoss({"bce": 1.0, "lovasz": 0.5})
    return model, TileAdapter("resize", 64), loss


def tiny_batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 101, 101, generator=g)
    masks = torch.zeros(n, 1, 101, 101)
    for i in range(1, n):  # sample 0 empty: the cls head and the non-empty seg branch both see data
        masks[i, :, 20 * i:, : 30 + 15 * i] = 1.0
        images[i] = 0.5 * images[i] + 0.5 * masks[i]  # learnable: salt is brighter
    return {"image": images, "mask": masks}


def measured(speeds: dict[str, float], calls: list | None = None):
    """A fake timer: images/s by precision (and '+cl' / '@Nt' variants when given)."""
    def measure(cands):
        if calls is not None:
            calls.append([c.label for c in cands])
        return [speeds.get(c.label, speeds.get(c.precision, 1.0)) for c in cands]
    return measure


def bn_layers(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


# ----------------------------------------------------------------------------- bf16 numerics


def test_bf16_path_trains_loss_falls() -> None:
    model, adapter, loss_fn = tiny_parts()
    rt = Runtime(torch.device("cpu"), torch.bfloat16, False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = tiny_batch()
    losses = [float(train_step(model.train(), adapter, loss_fn, opt, images=batch["image"], masks=batch["mask"], rt=rt))
              for _ in range(10)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_bf16_loss_close_to_fp32_and_grads_finite() -> None:
    """Lovasz (sort, cumsum, dot), BCE, the cls head and the deep-supervision branch under autocast."""
    model, adapter, _ = tiny_parts()
    batch = tiny_batch()
    pad = adapter.pad(batch["image"])
    for terms in ({"bce": 1.0, "lovasz": 0.5}, {"lovasz_symmetric": 1.0}, {"lovasz_elu": 1.0, "dice": 1.0}):
        loss_fn = DeepSupervisionLoss(terms)
        values = {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            m = copy.deepcopy(model).train()
            rt = Runtime(torch.device("cpu"), dtype, False)
            with rt.autocast():
                out = m(pad).map_spatial(adapter.crop)
                total, parts = loss_fn(out, batch["mask"])
            if dtype is not None:
                assert out.fused.dtype == torch.bfloat16  # the network did run in bf16
            assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
            total.backward()
            grads = [p.grad for p in m.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
            assert all(p.dtype == torch.float32 for p in m.parameters())
            assert all(g.dtype == torch.float32 for g in grads)  # master weights and grads stay fp32
            values[name] = {"total": float(total.detach()), **{k: float(v) for k, v in parts.items()}}
        for key, ref in values["fp32"].items():
            assert values["bf16"][key] == pytest.approx(ref, rel=0.03, abs=0.01), (terms, key, values)


def test_batchnorm_statistics_stay_fp32() -> None:
    model, adapter, loss_fn = tiny_parts()
    ref = copy.deepcopy(model)
    batch = tiny_batch()
    for m, dtype in ((model, torch.bfloat16), (ref, None)):
        rt = Runtime(torch.device("cpu"), dtype, False)
        opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: only the BN statistics move
        for _ in range(3):
            train_step(m.train(), adapter, loss_fn, opt, images=batch["image"], masks=batch["mask"], rt=rt)
    for bn, bn_ref in zip(bn_layers(model), bn_layers(ref), strict=True):
        assert bn.running_mean.dtype == torch.float32 and bn.running_var.dtype == torch.float32
        assert bn.weight.dtype == torch.float32
        torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=0.05, atol=0.02)
        torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=0.05, atol=0.02)


def test_predict_under_bf16_returns_float32_probabilities() -> None:
    model, adapter, loss_fn = tiny_parts()
    batches = [tiny_batch()]
    p32, l32 = predict(model, adapter, batches, Runtime(torch.device("cpu"), None, False), loss_fn=loss_fn,
                       hflip_tta=True)
    p16, l16 = predict(model, adapter, batches, Runtime(torch.device("cpu"), torch.bfloat16, False), loss_fn=loss_fn,
                       hflip_tta=True)
    assert p16.dtype == np.float32 and p16.shape == (4, 101, 101)
    assert np.abs(p16 - p32).max() < 0.02
    assert l16 == pytest.approx(l32, rel=0.03)


def test_train_epoch_with_bf16_runtime_and_no_scaler() -> None:
    model, adapter, loss_fn = tiny_parts()
    rt = Runtime.for_choice("cpu", P.Candidate("bf16", False, 1))
    assert rt.amp and not rt.needs_scaler and not rt.grad_scaler().is_enabled()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    schedule = CosineCycles(max_lr=0.01, min_lr=1e-4, cycles=1, steps_per_cycle=2)
    stats = train_epoch(model, adapter, loss_fn, [tiny_batch()] * 2, optimizer=opt, schedule=schedule, step=0, rt=rt)
    assert stats.images == 8 and np.isfinite(stats.loss) and stats.next_step == 2


# ---------------------------------------------------------------------------------- Runtime


def test_runtime_resolve_keeps_cuda_only_behaviour() -> None:
    rt = Runtime.resolve("cpu", True, True)
    assert rt.device.type == "cpu" and not rt.amp and rt.amp_dtype is None and not rt.channels_last
    assert rt.precision == "fp32" and not rt.grad_scaler().is_enabled()
    legacy = Runtime(torch.device("cpu"), True, False)  # the old (device, amp: bool, channels_last) form
    assert legacy.amp_dtype == torch.bfloat16
    cuda = Runtime.for_choice("cuda", P.choose("auto", True, device="cuda", amp=True))
    assert cuda.amp_dtype == torch.float16 and cuda.needs_scaler and cuda.channels_last
    assert P.choose("auto", False, device="cuda", amp=False).precision == "fp32"


# ---------------------------------------------------------------------------------- choose()


def test_auto_takes_bf16_only_when_clearly_faster(tmp_path, caplog) -> None:
    model, _, _ = tiny_parts()
    kw = dict(cpu=AMX, requested_threads=1, cache_dir=tmp_path, use_cache=False, input_shape=(4, 1, 101, 101))
    with caplog.at_level(logging.INFO, logger="salt_exp.train.precision"):
        slow = P.choose("auto", False, model, None, measure=measured({"fp32": 10.0, "bf16": 11.0}), **kw)
    assert slow.precision == "fp32" and slow.source == "measured"
    assert "not clearly faster" in slow.reason and "1.10x" in slow.reason
    assert slow.timings == {"fp32@1t": 10.0, "bf16@1t": 11.0}
    assert any("precision: fp32" in r.getMessage() and "not clearly faster" in r.getMessage() for r in caplog.records)
    fast = P.choose("auto", False, model, None, measure=measured({"fp32": 10.0, "bf16": 16.0}), **kw)
    assert fast.precision == "bf16" and fast.bf16_speedup == pytest.approx(1.6)
    assert fast.amp_dtype == torch.bfloat16
    assert fast.to_params() == {"train.precision_used": "bf16", "train.channels_last_used": "false",
                                "train.threads_used": "1"}
    tags = fast.to_tags()
    assert tags["salt.precision"] == "bf16" and "bf16@1t 16.00" in tags["salt.precision_timings"]
    assert "Test CPU with AMX" in tags["salt.cpu"] and tags["salt.cpu_bf16"] == "amx"
    assert "1.60x" in fast.log_line() and fast.to_metrics()["precision_bf16"] == 1.0


def test_auto_falls_back_when_bf16_unsupported(tmp_path, caplog) -> None:
    model, _, _ = tiny_parts()
    calls: list = []
    kw = dict(cpu=NO_BF16, requested_threads=1, cache_dir=tmp_path, measure=measured({"bf16": 100.0}, calls))
    with caplog.at_level(logging.INFO, logger="salt_exp.train.precision"):
        auto = P.choose("auto", False, model, None, **kw)
    assert auto.precision == "fp32" and auto.source == "unsupported" and "not supported" in auto.reason
    assert calls == []  # one candidate left: nothing to time
    assert any("not supported" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING, logger="salt_exp.train.precision"):
        forced = P.choose("bf16", False, model, None, **kw)
    assert forced.precision == "fp32" and "bf16 requested but not supported" in forced.reason
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    layouts = P.choose("auto", "auto", model, None, **kw)  # only the layout is timed, in fp32
    assert layouts.precision == "fp32" and calls == [["fp32@1t", "fp32+cl@1t"]]


def test_explicit_precision_skips_timing(tmp_path) -> None:
    def boom(cands):
        raise AssertionError("timed although nothing was to be chosen")
    model, _, _ = tiny_parts()
    for req in ("fp32", "bf16"):
        c = P.choose(req, False, model, None, cpu=AMX, requested_threads=1, cache_dir=tmp_path, measure=boom)
        assert c.precision == req and c.source == "requested" and c.timings == {}
    assert not (tmp_path / "precision").exists()


def test_channels_last_and_threads_are_measured(tmp_path) -> None:
    model, _, _ = tiny_parts()
    kw = dict(cpu=AMX, requested_threads=1, cache_dir=tmp_path, use_cache=False)
    small = P.choose("fp32", "auto", model, None, measure=measured({"fp32@1t": 10.0, "fp32+cl@1t": 10.3}), **kw)
    assert not small.channels_last  # 1.03x < LAYOUT_MARGIN
    big = P.choose("auto", "auto", model, None,
                   measure=measured({"fp32@1t": 10, "fp32+cl@1t": 9, "bf16@1t": 15, "bf16+cl@1t": 18}), **kw)
    assert big.precision == "bf16" and big.channels_last
    assert Runtime.for_choice("cpu", big).channels_last
    before = torch.get_num_threads()
    try:
        four = CpuInfo(model="Test CPU", flags=AMX.flags, torch_capability="AVX512", torch_version=torch.__version__,
                       mkldnn_bf16=True, cores=before + 2)
        t = P.choose("fp32", False, model, None, cpu=four, cache_dir=tmp_path, use_cache=False,
                     measure=measured({f"fp32@{before}t": 10.0, f"fp32@{before + 2}t": 13.0}))
        assert t.threads == before + 2 and torch.get_num_threads() == before + 2  # applied on return
    finally:
        torch.set_num_threads(before)


def test_cache_is_written_and_reread(tmp_path) -> None:
    model, _, _ = tiny_parts()
    calls: list = []
    kw = dict(cpu=AMX, requested_threads=1, cache_dir=tmp_path, input_shape=(4, 1, 101, 101),
              measure=measured({"fp32": 10.0, "bf16": 20.0}, calls), loadavg=lambda: 0.0)
    first = P.choose("auto", False, model, None, **kw)
    files = list((tmp_path / "precision").glob("*.json"))
    assert first.source == "measured" and len(calls) == 1 and len(files) == 1
    second = P.choose("auto", False, model, None, **kw)
    assert len(calls) == 1  # no timing the second time
    assert second.source == "cached" and second.precision == "bf16" and second.timings == first.timings
    other = P.choose("auto", False, model, None, **{**kw, "input_shape": (8, 1, 101, 101)})
    assert other.source == "measured" and len(calls) == 2  # another batch shape is another key


def test_busy_machine_verdict_is_not_cached(tmp_path) -> None:
    model, _, _ = tiny_parts()
    kw = dict(cpu=AMX, requested_threads=1, cache_dir=tmp_path, measure=measured({"fp32": 10.0, "bf16": 8.0}))
    busy = P.choose("auto", False, model, None, loadavg=lambda: 5.0, **kw)
    assert busy.precision == "fp32" and "not cached" in busy.reason and "loadavg 5.00 on 1 cores" in busy.reason
    assert not list(tmp_path.rglob("*.json"))
    quiet = P.choose("auto", False, model, None, loadavg=lambda: 0.2, **kw)
    assert quiet.source == "measured" and "not cached" not in quiet.reason and list(tmp_path.rglob("*.json"))


def test_cache_dir_defaults_to_env_at_call_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SALT_EXP_CACHE", str(tmp_path / "here"))
    assert P.default_cache_dir() == tmp_path / "here"
    model, _, _ = tiny_parts()
    P.choose("auto", False, model, None, cpu=AMX, requested_threads=1, measure=measured({"fp32": 1.0, "bf16": 2.0}),
             loadavg=lambda: 0.0)
    assert list((tmp_path / "here" / "precision").glob("*.json"))


def _state(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_choose_leaves_model_and_optimizer_unchanged(tmp_path) -> None:
    """Real timing of the real training step: weights, BN buffers, momentum, RNG, layout all restored,
    and the next training step gives bit-identical weights to a run that never timed anything."""
    model, adapter, loss_fn = tiny_parts()
    batch = tiny_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fp32 = Runtime.resolve("cpu", False, False)
    train_step(model.train(), adapter, loss_fn, opt, images=batch["image"], masks=batch["mask"], rt=fp32)  # momentum exists
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares the tensors
    before, rng = _state(model, opt), torch.get_rng_state()
    grads = [p.grad.clone() for p in model.parameters()]

    choice = P.choose("auto", "auto", model, training_step_fn(model, adapter, loss_fn, opt, batch=batch), optimizer=opt,
                      requested_threads=1, warmup=1, steps=1, cache_dir=tmp_path, use_cache=False,
                      input_shape=tuple(batch["image"].shape))
    assert choice.source in ("measured", "unsupported") and len(choice.timings) >= 2
    assert all(v > 0 for v in choice.timings.values())
    _assert_same(before, _state(model, opt))
    assert torch.equal(rng, torch.get_rng_state())
    _assert_same(grads, [p.grad for p in model.parameters()])
    assert all(p.is_contiguous() for p in model.parameters())

    train_step(model, adapter, loss_fn, opt, images=batch["image"], masks=batch["mask"], rt=fp32)
    train_step(twin.train(), adapter, loss_fn, twin_opt, images=batch["image"], masks=batch["mask"], rt=fp32)
    _assert_same(_state(twin, twin_opt), _state(model, opt))


def test_choose_runtime_prepares_model(tmp_path) -> None:
    model, adapter, loss_fn = tiny_parts()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rt, choice = choose_runtime(model, adapter, device="cpu", precision="bf16", channels_last=True, amp=True,
                                batch=tiny_batch(), loss_fn=loss_fn, optimizer=opt, requested_threads=1, cpu=AMX,
                                cache_dir=tmp_path)
    assert rt.amp_dtype == torch.bfloat16 and rt.channels_last and choice.source == "requested"
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_invalid_requests_and_cpuinfo_parsing() -> None:
    with pytest.raises(SaltError, match="train.precision"):
        P.choose("fp16")
    with pytest.raises(SaltError, match="channels_last"):
        P.choose("fp32", "yes")
    text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx512f amx_bf16 avx2\n"
    assert cpu_module._parse_cpuinfo(text) == ("Intel(R) Xeon(R) Platinum 8480+", {"fpu", "avx512f", "amx_bf16", "avx2"})
    cpu = cpu_module.detect_cpu()
    assert cpu.torch_version == torch.__version__ and cpu.cores >= 1 and cpu.describe()
    assert AMX.bf16_kind == "amx" and NO_BF16.bf16_kind == "none"
    emulated = CpuInfo(model="x", flags=("avx512f",), torch_capability="AVX512", torch_version="t", mkldnn_bf16=True,
                       cores=1)
    assert emulated.bf16_kind == "emulated"
