"""What the processor and this torch build can do for bf16: read once per process, never at import."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx512bw", "avx512_vnni", "avx2")



@dataclass(frozen=True, kw_only=True)
class CpuInfo:
    """What the processor and this torch build can do for bf16."""

    model: str  # "Intel(R) Xeon(R) Platinum 8480+"
    flags: tuple[str, ...]  # the bf16-relevant /proc/cpuinfo flags present, in _FLAGS order
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT"
    torch_version: str
    mkldnn_bf16: bool  # torch/oneDNN can run bf16 convolutions on this CPU (natively or emulated)
    cores: int  # CPUs this process may run on (affinity)

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def avx512f(self) -> bool:
        return "avx512f" in self.flags

    @property
    def bf16_kind(self) -> str:
        """``amx`` | ``avx512_bf16`` (native bf16 dot products) | ``emulated`` | ``none``."""
        if not self.mkldnn_bf16:
            return "none"
        if self.amx_bf16:
            return "amx"
        if self.avx512_bf16:
            return "avx512_bf16"
        return "emulated"

    @property
    def bf16_supported(self) -> bool:
        return self.bf16_kind != "none"

    def describe(self) -> str:
        """One line for logs and tags: model, flags, torch capability, bf16 kind."""
        flags = " ".join(self.flags) or "no avx512/amx flags"
        return (f"{self.model} | {self.cores} cores | {flags} | torch {self.torch_version} "
                f"{self.torch_capability} | bf16 {self.bf16_kind}")


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo text."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if model and flags:
            break
    return model, flags


def _torch_probe(name: str) -> bool | None:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else None
    except Exception:  # noqa: BLE001 - a probe must never break a run
        return None


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - private op: treat a missing one as "no bf16"
        return False


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@cache
def detect_cpu() -> CpuInfo:
    """Read /proc/cpuinfo (model name, flags) and ask torch what it detected itself.

    A flag counts only when torch agrees where it can tell (``torch.cpu._is_amx_tile_supported``
    also checks that the OS enabled the AMX tile state; ``_is_avx512_bf16_supported``).
    """
    model, flags = _parse_cpuinfo(_cpuinfo_text())
    if not flags:  # not Linux, or /proc hidden: trust torch's own detection
        probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported",
                  "avx512f": "_is_avx512_supported", "avx2": "_is_avx2_supported"}
        flags = {flag for flag, probe in probes.items() if _torch_probe(probe)}
    if _torch_probe("_is_amx_tile_supported") is False:
        flags -= {"amx_bf16", "amx_tile"}
    if _torch_probe("_is_avx512_bf16_supported") is False:
        flags.discard("avx512_bf16")
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        capability = "unknown"
    return CpuInfo(
        model=model or platform.processor() or platform.machine() or "unknown CPU",
        flags=tuple(f for f in _FLAGS if f in flags),
        torch_capability=capability,
        torch_version=torch.__version__,
        mkldnn_bf16=_mkldnn_bf16(),
        cores=_available_cores(),
    )
