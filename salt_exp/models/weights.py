"""Encoder weights: find ImageNet files in the local caches (downloading them only where allowed) and load
state_dicts.

Downloads are off by default (``HF_HUB_OFFLINE=1``: the Makefile, the CLI and the tests set it, so nothing
waits on a network that is not there); ``HF_HUB_OFFLINE=0`` lets a missing file be fetched once into the
same caches (timm's Hugging Face hub file, else its torch hub URL; pretrainedmodels' URL into the torch hub
cache). Offline, or when the download fails, the error names the file and the cache it belongs in.

Key names: a pretrainedmodels SE-ResNeXt/SENet state_dict and the matching timm ``legacy_se*``
backbone use identical key names (``layer0.conv1.weight`` ... ``layer4.2.se_module.fc2.bias``);
torchvision/pretrainedmodels ResNets and timm ResNets do too. They differ only in their classifier
(``last_linear.*`` / ``fc.*``), which an encoder does not have. Loading therefore keeps the keys
the encoder has, requires every encoder tensor to be present with a matching shape, and adapts
the first convolution when the file was trained on a different number of input channels.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from salt_exp.errors import SaltError

_PM_MODULES = {
    "resnet34": "torchvision_models",
    "se_resnext50_32x4d": "senet",
    "se_resnext101_32x4d": "senet",
    "senet154": "senet",
}


def downloads_allowed() -> bool:
    """False while ``HF_HUB_OFFLINE`` is set to 1/true/yes/on (the project's default)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("1", "true", "yes", "on")


OFFLINE_HINT = "downloads are off (HF_HUB_OFFLINE=1); HF_HUB_OFFLINE=0 fetches it where the network allows"


def _download_url(url: str, dest: Path, what: str) -> Path:
    """``url`` into ``dest`` (torch hub writes a temporary file and renames it); SaltError naming both."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=False)
    except Exception as exc:  # noqa: BLE001 - any network or HTTP failure becomes one line
        raise SaltError(f"{what}: download of {url} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                        f"place {dest.name} in {dest.parent} by hand") from exc
    return dest


def hub_checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch.hub.get_dir()), where torch.hub caches downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def import_pretrainedmodels(module: str) -> ModuleType:
    """``pretrainedmodels.models.<module>``, imported without its warnings and without moving torch's seeded draws.

    pretrainedmodels draws from torch's global generator on its first import: without the fork, the first model
    built in a process got other initial weights than the next one built from the same seed (a study's trials).
    """
    import warnings

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # pretrainedmodels/torchvision deprecation noise on import
        return importlib.import_module(f"pretrainedmodels.models.{module}")


def pretrainedmodels_imagenet_url(name: str) -> str:
    return import_pretrainedmodels(_PM_MODULES[name]).pretrained_settings[name]["imagenet"]["url"]


def pretrainedmodels_imagenet_file(name: str) -> Path:
    """Expected local path of the pretrainedmodels ImageNet file for ``name`` (may not exist)."""
    return hub_checkpoints_dir() / pretrainedmodels_imagenet_url(name).rsplit("/", 1)[-1]


def resolve_timm_imagenet_file(arch: str) -> Path:
    """Local file holding timm's default ImageNet weights for ``arch``: HF cache, then torch hub.

    Raises SaltError naming where to place the file when neither cache has it.
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    places = []
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
        places.append(f"model.safetensors of https://huggingface.co/{hub_id} in the HF cache {constants.HF_HUB_CACHE}")
    if url:
        local = hub_checkpoints_dir() / url.rsplit("/", 1)[-1]
        if local.is_file():
            return local
        places.append(f"{local.name} in {local.parent}")
    if not places:
        raise SaltError(f"timm model {arch!r} has no ImageNet weights; use weights='none' or a path")
    if downloads_allowed():
        if hub_id:
            from huggingface_hub import hf_hub_download

            try:
                return Path(hf_hub_download(hub_id, "model.safetensors"))
            except Exception as exc:  # noqa: BLE001 - falls back to the URL, else one line below
                failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__
                if not url:
                    raise SaltError(f"ImageNet weights for timm/{arch}: download from the Hugging Face hub ({hub_id}) "
                                    f"failed ({failure}); place {places[0]}") from exc
        return _download_url(url, hub_checkpoints_dir() / url.rsplit("/", 1)[-1], f"ImageNet weights for timm/{arch}")
    raise SaltError(
        f"ImageNet weights for timm/{arch} not found offline: place "
        f"{' or '.join(places)}, or pass weights=<path to a state_dict file> ({OFFLINE_HINT})"
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state_dict from a .pth/.pt/.bin (torch) or .safetensors file; unwraps common containers."""
    path = Path(path)
    if not path.is_file():
        raise SaltError(f"weights file not found: {path} (expected 'none', 'imagenet' or a state_dict path)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SaltError(f"{path} does not hold a state_dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a (O, C, k, k) conv kernel trained on C channels to ``in_channels`` channels.

    1 channel: sum over C, so a grayscale tile gives the response the RGB net gave to the same
    tile replicated to RGB. Otherwise: repeat the kernels cyclically, scaled by C / in_channels so
    the expected activation magnitude is kept (the segmentation_models_pytorch/timm convention).
    """
    src = weight.shape[1]
    if src == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % src
    return weight[:, index] * (src / in_channels)


def _first_conv_key(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise SaltError("encoder has no Conv2d layer")


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``: keep the model's keys, adapt the first conv, check shapes."""
    own = model.state_dict()
    first = _first_conv_key(model)
    if first in state:
        state = {**state, first: adapt_first_conv(state[first], own[first].shape[1])}
    missing = [k for k in own if k not in state]
    if missing:
        raise SaltError(
            f"{source} lacks {len(missing)} encoder tensors (first: {', '.join(missing[:3])}); "
            f"is it a state_dict of the same architecture?"
        )
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise SaltError(
            f"{source}: shape mismatch for {k}: file {tuple(state[k].shape)}, "
            f"encoder {tuple(own[k].shape)} ({len(wrong)} tensors differ)"
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def load_encoder_weights(encoder: nn.Module, name: str, weights: str) -> None:
    """Load ``weights`` (``"imagenet"`` or a state_dict path) into ``encoder.model``."""
    if weights == "imagenet":
        path = pretrainedmodels_imagenet_file(name)
        if not path.is_file() and downloads_allowed():
            _download_url(pretrainedmodels_imagenet_url(name), path, f"ImageNet weights for {name}")
        if not path.is_file():
            raise SaltError(
                f"ImageNet weights for {name} not found offline: place {path.name} in "
                f"{path.parent} (torch hub cache), or pass weights=<path to a state_dict file> ({OFFLINE_HINT})"
            )
    else:
        path = Path(weights)
    load_state_into(encoder.model, read_state_dict(path), source=str(path))
