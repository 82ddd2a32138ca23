"""Numeric precision, memory format and thread count of a run, chosen by measurement on CPU.

Whether bf16 autocast pays on a CPU depends on the processor: with AMX (``amx_bf16``) or
AVX512-BF16 the convolutions and matmuls run natively in bf16 and a training step can be ~1.5-2x
faster than fp32; with plain AVX512 bf16 is emulated (converted to fp32 inside oneDNN) and usually
slower; without AVX512 torch has no fast bf16 convolution at all. So ``precision: auto`` does not
assume: :func:`choose` times a few real training steps of the actual model in each candidate
setting, keeps bf16 only when it is clearly faster (``BF16_MARGIN``), and caches the verdict per
(CPU model, torch version, model signature, batch shape) so the next run on the same machine pays
nothing. The same timing decides channels_last on CPU (it often hurts there) and whether to raise
torch's intra-op thread count to the cores this process may use.

What stays in fp32 under CPU bf16 autocast (checked in tests/test_precision.py): every loss in
:mod:`salt_exp.losses` casts its logits to fp32 first (the Lovasz sort, cumsums and dot run in
fp32); BatchNorm keeps fp32 weights and running statistics (autocast feeds it bf16 activations,
the kernel accumulates in fp32); the LR finder smooths Python floats; the metric runs in numpy on
float32 probabilities (``engine.predict`` returns ``sigmoid(logits.float())``).

CUDA keeps the behaviour of ``engine.Runtime.resolve``: fp16 autocast + GradScaler when ``amp``,
channels_last when asked; nothing is timed.

The timing steps leave no trace: model parameters and buffers, optimizer state, gradients, the
torch RNG, train/eval mode, memory format and the thread count are restored exactly afterwards.
Nothing here reads the environment at import time.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt_exp.contract import Tag
from salt_exp.stores import dataset_cache
from salt_exp.train.cpu import CpuInfo, detect_cpu

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
BF16_MARGIN = 1.15  # bf16 must be at least this much faster (images/s ratio) to be taken by `auto`
LAYOUT_MARGIN = 1.05  # channels_last must beat the contiguous layout by this much
THREADS_MARGIN = 1.05  # more threads must beat torch's default by this much
CACHE_VERSION = 1  # bump when the decision rule changes: old verdicts are then ignored

StepFn = Callable[["Candidate"], int]  # one real training step in that setting -> images processed
MeasureFn = Callable[[Sequence["Candidate"]], Sequence[float]]  # candidates -> images/s each


# ------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Candidate:
    """One setting a training step can run in."""

    precision: str  # fp32 | bf16 | fp16 (fp16: CUDA only)
    channels_last: bool
    threads: int

    @property
    def label(self) -> str:
        return f"{self.precision}{'+cl' if self.channels_last else ''}@{self.threads}t"

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


@dataclass(frozen=True, kw_only=True)
class PrecisionChoice:
    """The setting a run uses, why, and what was measured (``timings``: label -> images/s)."""

    device: str  # cpu | cuda
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    threads: int
    source: str  # measured | cached | requested | unsupported | cuda
    reason: str
    requested: str  # "precision=auto channels_last=auto threads=auto"
    cpu: str  # CpuInfo.describe() (or the CUDA device name)
    bf16_kind: str = "none"
    timings: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None  # best bf16 / best fp32 images/s, as the decision compared them

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.precision, self.channels_last, self.threads)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.candidate.amp_dtype

    @property
    def bf16_speedup(self) -> float | None:
        """Measured images/s of the best bf16 setting over the best fp32 one, when both were timed."""
        return self.speedup

    def timings_text(self) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.timings.items(), key=lambda kv: -kv[1])) or "not timed"

    def log_line(self) -> str:
        """Short text for the per-epoch log line: ``bf16 cl=off 2t (measured, 1.62x fp32)``."""
        speed = self.bf16_speedup
        extra = f", bf16 {speed:.2f}x fp32" if speed is not None else ""
        return f"{self.precision} cl={'on' if self.channels_last else 'off'} {self.threads}t ({self.source}{extra})"

    def to_params(self) -> dict[str, str]:
        """Run params (immutable in MLflow: log them once per run, also on resume reuse the choice)."""
        return {"train.precision_used": self.precision, "train.channels_last_used": str(self.channels_last).lower(),
                "train.threads_used": str(self.threads)}

    def to_tags(self) -> dict[str, str]:
        return {Tag.PRECISION: self.precision, Tag.PRECISION_SOURCE: self.source,
                Tag.PRECISION_REASON: self.reason[:4900], Tag.PRECISION_TIMINGS: self.timings_text()[:4900],
                Tag.PRECISION_REQUESTED: self.requested, Tag.CPU: self.cpu[:4900], Tag.CPU_BF16: self.bf16_kind}

    def to_metrics(self) -> dict[str, float]:
        """Numeric per-run values (all floats) that fit a metrics dict."""
        out = {"precision_bf16": float(self.precision == "bf16"), "precision_threads": float(self.threads)}
        if self.bf16_speedup is not None:
            out["precision_bf16_speedup"] = self.bf16_speedup
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionChoice:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# ---------------------------------------------------------------------------------- the choice


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; any other name as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_cache_dir() -> Path:
    """The dataset cache folder (``salt_exp.stores.dataset_cache``, read at call time)."""
    return dataset_cache()


def model_signature(model: torch.nn.Module, input_shape: Sequence[int] | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> str:
    """Class name, parameter count, a hash of the module tree, the batch shape and the optimizer."""
    n_params = sum(p.numel() for p in model.parameters())
    tree = hashlib.sha1(repr(model).encode()).hexdigest()[:12]
    shape = "x".join(str(int(s)) for s in input_shape) if input_shape else "?"
    opt = type(optimizer).__name__ if optimizer is not None else "none"
    return f"{type(model).__name__}:{n_params}:{tree}:{shape}:{opt}"


def _cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / "precision" / f"{digest}.json"


def _read_cache(path: Path, key: dict[str, Any]) -> PrecisionChoice | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("key") != key:
            return None
        return PrecisionChoice.from_dict(payload["choice"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: measure again


def _write_cache(path: Path, key: dict[str, Any], choice: PrecisionChoice) -> None:
    from salt_exp.io import write_json

    try:
        write_json(path, {"key": key, "choice": choice.to_dict(), "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None})
    except OSError as exc:  # a read-only home must not fail a run
        log.warning("precision: could not write cache %s: %s", path, exc)


def _is_channels_last(model: torch.nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


@contextlib.contextmanager
def preserved(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
              scaler: torch.amp.GradScaler | None = None) -> Iterator[None]:
    """Run the body, then put model, optimizer, grad scaler, gradients, torch and numpy RNG, mode, layout
    and threads back exactly: steps timed inside leave no trace on the run."""
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
    numpy_rng = np.random.get_state()
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    was_training, was_cl, threads = model.training, _is_channels_last(model), torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        model.to(memory_format=torch.channels_last if was_cl else torch.contiguous_format)
        model.load_state_dict(model_state)
        if optimizer is not None:
            optimizer.load_state_dict(optim_state)
        if scaler is not None:
            scaler.load_state_dict(scaler_state)
        np.random.set_state(numpy_rng)
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        model.train(was_training)


def apply_candidate(model: torch.nn.Module, cand: Candidate) -> None:
    """Memory format of the model and torch's thread count for ``cand`` (autocast is the step's job)."""
    model.to(memory_format=torch.channels_last if cand.channels_last else torch.contiguous_format)
    if torch.get_num_threads() != cand.threads:
        torch.set_num_threads(cand.threads)


def time_candidates(model: torch.nn.Module, step_fn: StepFn, candidates: Sequence[Candidate], *, warmup: int = 1,
                    steps: int = 4, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Images/s of each candidate: ``warmup`` untimed steps each, then ``steps`` rounds of one timed step
    per candidate (order reversed every other round, to spread drift and load), median per candidate.
    Does not restore anything: wrap it in :func:`preserved`."""
    per_step: dict[Candidate, list[float]] = {c: [] for c in candidates}
    for cand in candidates:
        apply_candidate(model, cand)
        for _ in range(warmup):
            step_fn(cand)
    for r in range(steps):
        for cand in candidates if r % 2 == 0 else list(reversed(candidates)):
            apply_candidate(model, cand)
            t0 = clock()
            n = step_fn(cand)
            per_step[cand].append(n / max(clock() - t0, 1e-9))
    return [statistics.median(per_step[c]) for c in candidates]


def _check(requested_precision: str, requested_channels_last: bool | str, requested_threads: int | str | None) -> None:
    from salt_exp.errors import SaltError

    if requested_precision not in PRECISIONS:
        raise SaltError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {requested_precision!r}")
    if requested_channels_last not in (True, False, "auto"):
        raise SaltError(f"channels_last must be true, false or auto; got {requested_channels_last!r}")
    if not (requested_threads in (None, "auto") or (isinstance(requested_threads, int) and requested_threads >= 1)):
        raise SaltError(f"threads must be a positive integer or auto; got {requested_threads!r}")


def _cuda_choice(requested_precision: str, requested_channels_last: bool | str, amp: bool,
                 requested: str) -> PrecisionChoice:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda"
    cl = requested_channels_last is not False
    if requested_precision == "bf16" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        precision, reason = "bf16", "bf16 requested (CUDA, no GradScaler)"
    elif requested_precision == "fp32" or not amp:
        precision, reason = "fp32", "fp32 (amp off)" if not amp else "fp32 requested"
    else:
        precision, reason = "fp16", "fp16 autocast + GradScaler (train.amp on CUDA)"
    return PrecisionChoice(device="cuda", precision=precision, channels_last=cl, threads=torch.get_num_threads(),
                           source="cuda", reason=reason, requested=requested, cpu=name)


def _decide(candidates: list[Candidate], ips: list[float], *, margin: float, layout_margin: float,
            threads_margin: float, default_threads: int) -> tuple[Candidate, str, float | None]:
    """The fastest setting where every departure from (fp32, contiguous, default threads) earns its margin."""
    speed = dict(zip(candidates, ips, strict=True))

    def best_layout(precision: str, threads: int) -> Candidate | None:
        plain = Candidate(precision, False, threads)
        cl = Candidate(precision, True, threads)
        if plain not in speed:
            return cl if cl in speed else None
        if cl in speed and speed[cl] >= layout_margin * speed[plain]:
            return cl
        return plain

    def best_threads(precision: str) -> Candidate | None:
        options = [c for c in (best_layout(precision, t) for t in sorted({c.threads for c in candidates})) if c]
        if not options:
            return None
        base = next((c for c in options if c.threads == default_threads), options[0])
        faster = [c for c in options if c != base and speed[c] >= threads_margin * speed[base]]
        return max(faster, key=speed.get) if faster else base

    fp32, bf16 = best_threads("fp32"), best_threads("bf16")
    if fp32 is None:
        return bf16, f"bf16 {bf16.label} {speed[bf16]:.2f} img/s (fp32 not a candidate)", None
    if bf16 is None:
        return fp32, f"fp32 {fp32.label} {speed[fp32]:.2f} img/s (bf16 not a candidate)", None
    ratio = speed[bf16] / speed[fp32]
    if ratio >= margin:
        return bf16, (f"bf16 {bf16.label} {speed[bf16]:.2f} img/s vs fp32 {fp32.label} {speed[fp32]:.2f} img/s "
                      f"= {ratio:.2f}x >= {margin:.2f}x"), ratio
    return fp32, (f"bf16 not clearly faster: {bf16.label} {speed[bf16]:.2f} vs {fp32.label} {speed[fp32]:.2f} "
                  f"img/s = {ratio:.2f}x < {margin:.2f}x; keeping fp32"), ratio


def choose(
    requested_precision: str = "auto",
    requested_channels_last: bool | str = "auto",
    model: torch.nn.Module | None = None,
    step_fn: StepFn | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    device: str | torch.device = "cpu",
    amp: bool = True,
    requested_threads: int | str | None = None,
    input_shape: Sequence[int] | None = None,
    purpose: str = "train",
    warmup: int = 1,
    steps: int = 4,
    margin: float = BF16_MARGIN,
    layout_margin: float = LAYOUT_MARGIN,
    threads_margin: float = THREADS_MARGIN,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    cpu: CpuInfo | None = None,
    measure: MeasureFn | None = None,
    loadavg: Callable[[], float] | None = None,
) -> PrecisionChoice:
    """Decide precision, channels_last and threads for ``model`` on ``device``.

    CPU: ``requested_precision`` ``auto`` times ``step_fn`` (one real training step: forward, loss,
    backward, optimizer step, run in the given :class:`Candidate`; returns the number of images) for
    fp32 and bf16 and takes bf16 only at >= ``margin`` x the images/s of fp32; ``fp32``/``bf16`` skip
    that timing (``bf16`` on a CPU or torch build without bf16 falls back to fp32, with the reason).
    ``requested_channels_last``: ``auto`` times both layouts (channels_last kept at >= ``layout_margin``),
    True/False force it. ``requested_threads``: an int forces ``torch.set_num_threads``; None/``auto``
    keeps torch's default unless this process may use more cores, then times both. Timing steps
    run inside :func:`preserved`: model, ``optimizer``, gradients, RNG, layout stay as they were.
    On return torch's thread count is the chosen one; the model's layout is left to the caller
    (``Runtime.for_choice(...).prepare_model(model)``).

    A measured verdict is cached in ``cache_dir`` (default :func:`default_cache_dir`) under
    ``precision/<hash>.json``, keyed by CPU model and flags, torch version, the model signature
    (:func:`model_signature` with ``input_shape``), ``purpose`` and the candidates; with ``use_cache``
    a hit is returned without timing. A verdict measured while the machine was oversubscribed
    (1-minute load average before timing above the cores this process may use) is used for this run
    but not cached: under contention bf16 can lose (OpenMP threads stall), which says nothing about
    the next run. ``measure`` (tests, benchmarks) replaces the timing: it gets the candidates and
    returns images/s for each; ``cpu`` replaces :func:`detect_cpu`; ``loadavg`` replaces
    ``os.getloadavg()[0]``.

    CUDA: no timing; fp16 autocast (GradScaler) when ``amp`` and precision is not fp32, bf16 when
    asked and supported, channels_last unless False.
    """
    _check(requested_precision, requested_channels_last, requested_threads)
    requested = (f"precision={requested_precision} channels_last={str(requested_channels_last).lower()} "
                 f"threads={requested_threads or 'auto'}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        return _cuda_choice(requested_precision, requested_channels_last, amp, requested)
    cpu = cpu or detect_cpu()
    default_threads = torch.get_num_threads()
    candidates, notes = _candidates(cpu, requested_precision, requested_channels_last, requested_threads)
    base = dict(device="cpu", requested=requested, cpu=cpu.describe(), bf16_kind=cpu.bf16_kind)
    if len(candidates) == 1:
        c = candidates[0]
        reason = "; ".join(notes) or f"{c.precision} requested, nothing to measure"
        choice = PrecisionChoice(precision=c.precision, channels_last=c.channels_last, threads=c.threads,
                                 source="unsupported" if notes else "requested", reason=reason, **base)
        return _finish(choice, requested_precision)
    if model is None or (step_fn is None and measure is None):
        raise ValueError("choose() needs the model and a step_fn (or measure) to time the candidates")
    margins = {"margin": margin, "layout_margin": layout_margin, "threads_margin": threads_margin}
    key = {"v": CACHE_VERSION, "cpu": cpu.model, "flags": list(cpu.flags), "cores": cpu.cores,
           "torch": cpu.torch_version, "model": model_signature(model, input_shape, optimizer), "purpose": purpose,
           "candidates": [c.label for c in candidates], "margins": list(margins.values())}
    path = _cache_file(Path(cache_dir) if cache_dir is not None else default_cache_dir(), key)
    hit = _read_cache(path, key) if use_cache else None
    if hit is not None:
        return _finish(replace(hit, source="cached", requested=requested, reason=f"cached ({path.name}): {hit.reason}"),
                       requested_precision)
    load_before = _load(loadavg)
    with preserved(model, optimizer):
        ips = ([float(v) for v in measure(candidates)] if measure is not None
               else time_candidates(model, step_fn, candidates, warmup=warmup, steps=steps))
    best, reason, speedup = _decide(candidates, ips, default_threads=default_threads, **margins)
    busy = load_before is not None and load_before > cpu.cores
    if load_before is not None:
        reason += f"; loadavg {load_before:.2f} on {cpu.cores} cores"
    if busy and use_cache:
        reason += " (machine busy: verdict not cached)"
    choice = PrecisionChoice(precision=best.precision, channels_last=best.channels_last, threads=best.threads,
                             source="measured", reason="; ".join([*notes, reason]), speedup=speedup,
                             timings={c.label: round(v, 3) for c, v in zip(candidates, ips, strict=True)}, **base)
    if use_cache and not busy:
        _write_cache(path, key, choice)
    return _finish(choice, requested_precision)


def _precisions(cpu: CpuInfo, requested_precision: str) -> tuple[list[str], list[str]]:
    """The precisions to consider and, when bf16 was wanted but is not possible, why."""
    why = f"torch {cpu.torch_capability}, oneDNN bf16 {'yes' if cpu.mkldnn_bf16 else 'no'}"
    if requested_precision == "auto":
        if cpu.bf16_supported:
            return ["fp32", "bf16"], []
        return ["fp32"], [f"bf16 not supported on this CPU/torch ({why}): fp32"]
    if requested_precision == "bf16" and not cpu.bf16_supported:
        return ["fp32"], [f"bf16 requested but not supported on this CPU/torch ({why}): falling back to fp32"]
    return [requested_precision], []


def _candidates(cpu: CpuInfo, requested_precision: str, requested_channels_last: bool | str,
                requested_threads: int | str | None) -> tuple[list[Candidate], list[str]]:
    """Every setting the request leaves open (one when everything was asked for explicitly), and notes."""
    precisions, notes = _precisions(cpu, requested_precision)
    layouts = [False, True] if requested_channels_last == "auto" else [bool(requested_channels_last)]
    default_threads = torch.get_num_threads()
    if isinstance(requested_threads, int):
        thread_options = [requested_threads]
    else:  # torch's default, plus every core we may use when torch chose fewer
        thread_options = sorted({default_threads, max(default_threads, cpu.cores)})
    return [Candidate(p, cl, t) for p in precisions for cl in layouts for t in thread_options], notes


def _finish(choice: PrecisionChoice, requested_precision: str) -> PrecisionChoice:
    """Apply the chosen thread count and say what was chosen (a warning when bf16 was asked and denied)."""
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    denied = requested_precision == "bf16" and choice.precision != "bf16"
    log.log(logging.WARNING if denied else logging.INFO, "precision: %s -- %s [%s] timings (img/s): %s",
            choice.log_line(), choice.reason, choice.cpu, choice.timings_text())
    return choice


def _load(loadavg: Callable[[], float] | None) -> float | None:
    if loadavg is not None:
        return float(loadavg())
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
