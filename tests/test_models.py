"""Encoder registry, weights loading, UNet shapes for every toggle combination (CPU, weights none)."""

from __future__ import annotations

import itertools

import pytest
import torch

from salt_exp.errors import SaltError
from salt_exp.models import SaltOutput, build_encoder, build_model, encoders, list_encoders
from salt_exp.models.decoder import Hypercolumn
from salt_exp.models.heads import HEAD_CHANNELS, FusionHead
from salt_exp.models.weights import adapt_first_conv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = (16, 16, 8, 8, 4)  # tiny decoder: shapes and wiring are what is tested, not capacity


@pytest.fixture(autouse=True)
def _offline_caches(tmp_path, monkeypatch):
    """Empty torch hub / HF caches, offline: nothing can be downloaded or found by accident."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(0)


class ModelTester:
    """Shared forward/backward check, in the spirit of segmentation_models_pytorch's tester."""

    encoder: str = ""
    sizes: tuple[int, ...] = (128, 64)

    def check(self, model: torch.nn.Module, size: int, in_channels: int, batch: int = 2) -> SaltOutput:
        x = torch.randn(batch, in_channels, size, size)
        out = model(x)
        assert isinstance(out, SaltOutput)
        assert out.fused.shape == (batch, 1, size, size)
        if model.deep_supervision:
            assert out.seg.shape == (batch, 1, size, size) and out.cls.shape == (batch,)
        else:
            assert out.seg is None and out.cls is None
        loss = out.fused.mean() + (out.seg.mean() + out.cls.mean() if out.seg is not None else 0)
        loss.backward()
        first = next(model.encoder.parameters())
        assert first.grad is not None and torch.isfinite(first.grad).all()
        return out

    def test_forward_backward(self) -> None:
        for size, in_channels in zip(self.sizes, (1, 3), strict=True):
            model = build_model(self.encoder, in_channels=in_channels, decoder_channels=TINY)
            self.check(model, size, in_channels, batch=1 if size > 64 else 2)  # CPU time: 2 shared cores


class TestPretrainedModelsResNet34(ModelTester):
    encoder = "resnet34"
    sizes = (128, 160)  # 160: any multiple of 32 works


class TestTimmResNet18(ModelTester):
    encoder = "timm/resnet18"
    sizes = (128, 64)


@pytest.mark.parametrize("scse,hypercolumn,deep_supervision", list(itertools.product([False, True], repeat=3)))
def test_toggle_combinations(scse: bool, hypercolumn: bool, deep_supervision: bool) -> None:
    model = build_model(
        "timm/resnet18",
        decoder_channels=TINY,
        scse=scse,
        hypercolumn=hypercolumn,
        deep_supervision=deep_supervision,
        dropout=0.1,
    )
    ModelTester().check(model, 32, 1)
    model.eval()  # dropout off: deterministic
    with torch.no_grad():
        assert torch.equal(model(torch.ones(1, 1, 32, 32)).fused, model(torch.ones(1, 1, 32, 32)).fused)


def test_channels_last_and_autocast() -> None:
    model = build_model("timm/resnet18", decoder_channels=TINY).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 64, 64).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.fused.dtype == torch.bfloat16 and out.fused.shape == (2, 1, 64, 64)
    out.fused.float().mean().backward()


def test_hypercolumn_equals_concatenate_then_conv() -> None:
    stages = [torch.randn(2, c, s, s) for c, s in ((8, 4), (6, 8), (4, 16))]
    hyper = Hypercolumn((8, 6, 4), out_channels=5, dropout=0.0).eval()
    upsampled = [
        torch.nn.functional.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False) for t in stages
    ]
    weight = torch.cat([p.weight for p in hyper.projections], dim=1)  # (5, 18, 1, 1)
    expected = hyper.post(torch.nn.functional.conv2d(torch.cat(upsampled, dim=1), weight))
    torch.testing.assert_close(hyper(stages), expected, rtol=1e-5, atol=1e-5)


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(SaltError, match="se_resnext50_32x4d.*timm/resnet34"):
        build_model("resnet35")
    with pytest.raises(SaltError, match="valid:"):
        build_encoder("timm/not_a_model")


def test_decoder_depth_must_reach_full_resolution() -> None:
    with pytest.raises(SaltError, match="5 stages"):
        build_model("timm/resnet18", decoder_channels=(16, 8, 8, 4))


@pytest.mark.parametrize("name,filename", [("resnet34", "resnet34-333f7ec4.pth"), ("timm/resnet18", "resnet18")])
def test_missing_imagenet_weights_name_the_file(name: str, filename: str, tmp_path) -> None:
    with pytest.raises(SaltError, match=filename) as info:
        build_encoder(name, weights="imagenet")
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(info.value) and "HF_HUB_OFFLINE=0" in str(info.value)


def test_imagenet_weights_are_downloaded_into_the_cache_where_allowed(tmp_path, monkeypatch) -> None:
    """HF_HUB_OFFLINE=0: a missing file is fetched once into the torch hub cache (the network is simulated:
    the sandbox has none), and a failed download is one line naming the URL and where the file belongs."""
    import huggingface_hub

    reference = build_encoder("resnet34", in_channels=3)
    urls = []

    def serve(url, dst, progress=True):
        urls.append(url)
        torch.save({**reference.model.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, dst)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(torch.hub, "download_url_to_file", serve)
    gray = build_encoder("resnet34", weights="imagenet", in_channels=1)
    torch.testing.assert_close(gray.model.conv1.weight, reference.model.conv1.weight.sum(1, keepdim=True))
    assert urls[0].endswith("resnet34-333f7ec4.pth") and (tmp_path / "torch/hub/checkpoints/resnet34-333f7ec4.pth").is_file()
    build_encoder("resnet34", weights="imagenet")
    assert len(urls) == 1  # cached: fetched once

    def down(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", down)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", down)
    with pytest.raises(SaltError, match=r"download of https://\S+resnet18\S+ failed \(OSError: Name or service"):
        build_encoder("timm/resnet18", weights="imagenet")


def test_imagenet_weights_found_in_hub_cache(tmp_path) -> None:
    reference = build_encoder("resnet34", in_channels=3)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = {**reference.model.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, checkpoints / "resnet34-333f7ec4.pth")
    gray = build_encoder("resnet34", weights="imagenet", in_channels=1)
    torch.testing.assert_close(gray.model.conv1.weight, reference.model.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(gray.model.layer4[0].conv1.weight, reference.model.layer4[0].conv1.weight)


def test_pretrainedmodels_se_resnext_state_dict_loads_into_timm(tmp_path) -> None:
    source = build_encoder("se_resnext50_32x4d", in_channels=3).eval()
    state = source.model.state_dict()
    state.update({"last_linear.weight": torch.zeros(1000, 2048), "last_linear.bias": torch.zeros(1000)})
    path = tmp_path / "se_resnext50_pretrainedmodels.pth"
    torch.save(state, path)
    target = build_encoder("timm/legacy_seresnext50_32x4d", weights=str(path), in_channels=3).eval()
    loaded = target.model.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert target.out_channels == source.out_channels and target.strides == source.strides
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # same weights -> same features at every stride
        for a, b in zip(source(x), target(x), strict=True):
            torch.testing.assert_close(a, b)


def test_weights_file_of_another_architecture_is_rejected(tmp_path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(build_encoder("timm/resnet18").model.state_dict(), path)
    with pytest.raises(SaltError, match="lacks|shape mismatch"):
        build_encoder("resnet34", weights=str(path))
    with pytest.raises(SaltError, match="not found"):
        build_encoder("resnet34", weights=str(tmp_path / "missing.pth"))


def test_first_conv_adaptation() -> None:
    w = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(adapt_first_conv(w, 1), w.sum(1, keepdim=True))
    five = adapt_first_conv(w, 5)
    assert five.shape == (4, 5, 3, 3)
    torch.testing.assert_close(five[:, 3], w[:, 0] * 3 / 5)
    assert adapt_first_conv(w, 3) is w


def test_list_encoders(monkeypatch) -> None:
    monkeypatch.setattr(encoders, "encoder_names", lambda: ["resnet34", "timm/resnet18"])
    rows = list_encoders()
    assert [r["name"] for r in rows] == ["resnet34", "timm/resnet18"]
    assert [r["family"] for r in rows] == ["pretrainedmodels", "timm"]
    assert 21_000_000 < rows[0]["params"] < 22_000_000  # resnet34 without its classifier


@pytest.mark.parametrize("cache", ["torch_hub", "hf"])
def test_timm_imagenet_weights_found_offline(cache: str, tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    full = timm.create_model("resnet18", pretrained=False).state_dict()  # 3 channels, with fc
    if cache == "torch_hub":
        (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
        torch.save(full, tmp_path / "torch" / "hub" / "checkpoints" / "resnet18_a1_0-d63eafa0.pth")
    else:  # the huggingface_hub cache layout: refs/main names the snapshot
        repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0123abcd")
        (repo / "snapshots" / "0123abcd").mkdir(parents=True)
        save_file(full, str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    encoder = build_encoder("timm/resnet18", weights="imagenet", in_channels=1)
    torch.testing.assert_close(encoder.model.conv1.weight, full["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(encoder.model.layer4[1].conv2.weight, full["layer4.1.conv2.weight"])


def test_fusion_head_equals_conv_over_broadcast_concatenation() -> None:
    head = FusionHead().eval()
    pixel, image = torch.randn(2, HEAD_CHANNELS, 8, 8), torch.randn(2, HEAD_CHANNELS)
    weight = torch.cat([head.pixel.weight, head.image.weight[:, :, None, None]], dim=1)
    broadcast = image[:, :, None, None].expand(-1, -1, 8, 8)
    hidden = torch.nn.functional.conv2d(torch.cat([pixel, broadcast], dim=1), weight, head.pixel.bias)
    torch.testing.assert_close(head(pixel, image), head.logit(hidden))


@pytest.mark.parametrize("encoder", ["resnet34", "timm/resnet18"])
def test_extra_planes_start_at_zero_and_keep_the_plain_draws(encoder: str) -> None:
    """A model with a zero-started extra plane has the plain model's weights (same seed) and, on its first step,
    its outputs whatever the plane holds; the plane's weights still learn."""
    torch.manual_seed(3)
    plain = build_model(encoder, in_channels=1, decoder_channels=TINY).eval()
    torch.manual_seed(3)
    wide = build_model(encoder, in_channels=1, extra_channels=1, decoder_channels=TINY).eval()
    p, w = plain.state_dict(), wide.state_dict()
    widened = [k for k in p if p[k].shape != w[k].shape]
    assert len(widened) == 1 and w[widened[0]].shape[1] == 2
    assert torch.equal(w[widened[0]][:, :1], p[widened[0]]) and not w[widened[0]][:, 1:].any()
    assert all(torch.equal(p[k], w[k]) for k in p if k not in widened)
    x, plane = torch.rand(2, 1, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        assert torch.equal(plain(x).fused, wide(torch.cat([x, plane], 1)).fused)
    wide.train()
    wide(torch.cat([x, plane], 1)).fused.mean().backward()
    grad = dict(wide.named_parameters())[widened[0]].grad
    assert grad[:, 1:].abs().sum() > 0


def test_same_seed_same_weights_across_the_first_pretrainedmodels_import() -> None:
    """pretrainedmodels draws random numbers on import: the first resnet34 built in a fresh process must still
    equal the second one built from the same seed (a study builds many in one process)."""
    import subprocess
    import sys

    code = ("import torch\nfrom salt_exp.models import build_encoder\n"
            "def first():\n    torch.manual_seed(5)\n    return build_encoder('resnet34').model.conv1.weight.clone()\n"
            "a = first(); b = first()\nprint(torch.equal(a, b), torch.equal(a, first()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["True", "True"]


def test_widen_input_refuses_negative_planes() -> None:
    with pytest.raises(SaltError, match="extra input planes"):
        encoders.widen_input(build_encoder("timm/resnet18"), -1)
