"""Side-by-side quality at a fixed wall-time budget per fold (issue 14): a plain smp loop against harness configs.

    .venv/bin/python benchmarks/bench_quality.py --data ../shared/tgs [--minutes 25] [--folds 0-4]
        [--pipelines smp,reference,cpu] [--results benchmarks/results/quality.json] [--report-only] [--docs]
    make bench-quality DATA=../shared/tgs

Every (pipeline, fold) is one *part*: trained for ``--minutes`` of wall time on this machine, one after
another (never two at once: they would share the cores), on the harness's persisted folds of ``--data``
(random, k=5, seed 42), scored on the fold's validation tiles at threshold 0.5 with the harness's metric.
A finished part is appended to the results file (temp file + rename) with its per-tile scores and coverage
bins, so a benchmark longer than a session runs in parts: rerun the same command and it continues with the
parts that are missing, interleaved fold by fold (fold 0 of every pipeline first). The report (stdout, and
with ``--docs`` the "Quality" section of docs/BENCHMARKS.md) is computed from the results file alone.

Pipelines
- ``smp``: the plain loop a user writes with segmentation_models_pytorch (requirements-bench.txt):
  ``smp.Unet("resnet34", encoder_weights=None, decoder_attention_type="scse")``, 101 -> 128 replicate pad,
  Adam 1e-3 with cosine annealing to 1e-5 over the steps that fit in the budget (timed on the first
  batches, re-fitted after every epoch to the measured pace), BCE +
  soft Dice on the 101 crop, random h-flip, batch 16, fp32 (as written, no autocast), validation after each
  pass over the training tiles, the best epoch's predictions kept.
- ``reference``: ``configs/base.yaml`` with a ResNet-34 encoder; ``cpu``: ``configs/cpu.yaml``; or
  ``NAME=CONFIG`` for any config file. Each part is ``salt-exp cv CONFIG --folds K --study bq-NAME`` with
  ``schedule.budget_minutes`` set (so it is a normal, resumable cv in MLflow): its best snapshot per fold
  (selected on val_map at 0.5, as the smp loop's best epoch is) gives the tile scores.

A part is keyed by pipeline, fold, minutes, the pipeline's recipe (config hash; the smp loop's version)
and the folds file: a changed config is trained again, its old parts are reported as stale and left out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "quality.json"
DOCS = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
HARNESS = {"reference": ("configs/base.yaml", ["model.encoder=resnet34"]), "cpu": ("configs/cpu.yaml", [])}
SMP_VERSION = "smp-loop-2"  # bump when the loop below changes: its parts are then trained again
PLAN_FILL = 0.97


# ---------------------------------------------------------------- results file


def read_parts(path: Path, kind: str = "bench_quality") -> list[dict]:
    """The parts of a benchmark's results file (``{"parts": [...]}``), [] when there is none yet; exits in one line
    naming the file when it is not one. Every benchmark's results file is read this way."""
    if not path.exists():
        return []
    try:
        parts = json.loads(path.read_text(encoding="utf-8"))["parts"]
    except (ValueError, KeyError, TypeError) as exc:
        sys.exit(f"{path}: not a {kind} results file ({exc}); move it away or fix it")
    return parts


def write_part(path: Path, part: dict, key: Callable[[dict], tuple], kind: str = "bench_quality") -> None:
    """Add ``part`` to the results file in place of the part with the same ``key``: a temp file, then a rename."""
    parts = [p for p in read_parts(path, kind) if key(p) != key(part)] + [part]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"parts": parts}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_children(tag: str, script: str, todo: list[tuple[str, list[str]]]) -> int:
    """Each part of ``todo`` ((what, its arguments)) as a child ``python script ...`` run, one after another (a
    part gets a fresh process and the whole machine); the first failure stops with its exit code."""
    for what, args in todo:
        print(f"[{tag}] {what} ...", flush=True)
        rc = subprocess.call([sys.executable, script, *args], cwd=REPO)
        if rc:
            print(f"[{tag}] {what} failed (exit {rc}); rerun the command to continue", flush=True)
            return rc
    return 0


def part_parser(doc: str, results: Path) -> argparse.ArgumentParser:
    """The options every part-wise real-data benchmark takes (each adds its own, and the internal ``--part``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "tgs"))
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--folds", default="0-4")
    ap.add_argument("--results", default=str(results))
    ap.add_argument("--report-only", action="store_true", help="train nothing: report the results file")
    ap.add_argument("--max-parts", type=int, default=None, help="train at most this many missing parts, then report")
    ap.add_argument("--docs", action="store_true", help="write the report into docs/BENCHMARKS.md")
    return ap


def data_and_results(args: argparse.Namespace) -> tuple[Path, Path]:
    """(data, results) paths of parsed ``part_parser`` options, the offline environment set; exits in one line
    when ``--data`` is not a Kaggle-layout folder."""
    for key, value in (("HF_HUB_OFFLINE", "1"), ("NO_ALBUMENTATIONS_UPDATE", "1"), ("MPLBACKEND", "Agg")):
        os.environ.setdefault(key, value)
    data, results = Path(args.data).resolve(), Path(args.results).resolve()
    if not (data / "train.csv").exists():
        sys.exit(f"--data {data}: no train.csv (expected the Kaggle TGS layout)")
    return data, results


def load_results(path: Path) -> list[dict]:
    return read_parts(path)


def save_part(path: Path, part: dict) -> None:
    write_part(path, part, key_of)


def key_of(part: dict) -> tuple:
    return part["pipeline"], part["fold"], part["minutes"], part["recipe"], part["folds_file"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---------------------------------------------------------------- pipelines


def harness_config(name: str, spec: str, data: Path, minutes: float):
    from salt_exp.config import load_config

    path, overrides = HARNESS.get(name, (spec, []))
    return load_config(REPO / path, [f"data.root={data}", *overrides, f"schedule.budget_minutes={minutes}"])


def recipe_of(name: str, spec: str, data: Path, minutes: float) -> str:
    if name == "smp":
        return SMP_VERSION
    from dataclasses import replace

    from salt_exp.config import config_hash

    cfg = harness_config(name, spec, data, minutes)
    return config_hash(replace(cfg, data=replace(cfg.data, root="<data>")))  # the same recipe on any checkout


def fold_split(data: Path):
    """(tiles, train_idx per fold, val_idx per fold, folds file) from the harness's persisted random folds."""
    from salt_exp.data.folds import folds_path, load_or_create_folds
    from salt_exp.data.kaggle import load_kaggle

    kd = load_kaggle(str(data))
    folds = load_or_create_folds(kd, "random", 5, 42)["fold"].to_numpy()
    path = folds_path(kd, "random", 5, 42)
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:10]
    return kd.train, folds, f"{path.parent.name}/{path.name}@{digest}"


def score_tiles(probs: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from salt_exp.metrics import coverage_bins, image_scores

    return image_scores(probs > 0.5, masks), coverage_bins(masks)


def run_smp(data: Path, fold: int, minutes: float, seed: int = 42) -> dict:
    """The plain smp loop of the module docstring; returns the part's measurements."""
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F

    started = time.perf_counter()
    budget_s = 60.0 * minutes
    tiles, folds, _ = fold_split(data)
    tr, va = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    x = torch.from_numpy(tiles.images.astype(np.float32) / 255.0)[:, None]
    y = torch.from_numpy(tiles.masks.astype(np.float32))[:, None]
    torch.manual_seed(seed)
    model = smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1, decoder_attention_type="scse")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pad = (13, 14, 13, 14)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model(F.pad(images, pad, mode="replicate"))[:, :, 13:114, 13:114]

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits).flatten(1)
        t = target.flatten(1)
        dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
        return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()

    def batches(epoch_rng: np.random.Generator):
        order = epoch_rng.permutation(tr)
        for i in range(0, len(order) - 15, 16):
            idx = order[i:i + 16]
            images, masks = x[idx].clone(), y[idx].clone()
            flip = torch.from_numpy(epoch_rng.random(len(idx)) < 0.5)
            images[flip], masks[flip] = images[flip].flip(-1), masks[flip].flip(-1)
            yield images, masks

    def step(images, masks) -> float:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forward(images), masks)
        loss.backward()
        opt.step()
        return loss.item()

    def validate() -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return np.concatenate([torch.sigmoid(forward(x[va[i:i + 64]])).numpy()[:, 0]
                                   for i in range(0, len(va), 64)])

    # plan: time a few real steps and one validation, then anneal over the steps that fit
    probe = batches(np.random.default_rng(seed + 1))
    t_steps = []
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for i in range(8):
        t0 = time.perf_counter()
        step(*next(probe))
        if i >= 2:
            t_steps.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    validate()
    val_s = time.perf_counter() - t0
    model.load_state_dict(state)
    opt.load_state_dict(opt_state)
    step_s = statistics.fmean(t_steps)
    per_epoch = len(tr) // 16
    left = (budget_s - (time.perf_counter() - started)) * PLAN_FILL
    epochs_fit = left / (per_epoch * step_s + val_s)
    total_steps = max(1, int((left - math.ceil(epochs_fit) * val_s) / step_s))
    # cosine from 1e-3 to 1e-5 over `total_steps`, re-fitted after every epoch to the measured pace (a
    # first-batch timing is often off by a quarter: the loop would end early or be cut mid-anneal)
    horizon = [total_steps]

    def cosine(i: int) -> float:
        t = min(i, horizon[0]) / max(horizon[0], 1)
        return 1e-2 + 0.5 * (1 - 1e-2) * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    loop_start = time.perf_counter()

    done, epoch, best, best_probs, history = 0, 0, -1.0, None, []
    while epoch == 0 or (done < horizon[0] and time.perf_counter() - started < budget_s):  # one epoch at least
        for images, masks in batches(np.random.default_rng(seed * 1000 + epoch)):
            step(images, masks)
            sched.step()
            done += 1
            if done >= horizon[0] or (done > 1 and time.perf_counter() - started >= budget_s):
                break
        probs = validate()
        pace = (time.perf_counter() - loop_start) / done  # wall seconds per step, validation included
        left_s = (budget_s - (time.perf_counter() - started)) * PLAN_FILL
        horizon[0] = max(done, done + int(left_s / pace))
        scores, _ = score_tiles(probs, tiles.masks[va])
        history.append(round(float(scores.mean()), 4))
        print(f"[smp fold {fold}] epoch {epoch + 1}: val_map {history[-1]:.4f}, {done}/{horizon[0]} steps, "
              f"{time.perf_counter() - started:.0f}s of {budget_s:.0f}s", flush=True)
        if best_probs is None or scores.mean() > best:
            best, best_probs = float(scores.mean()), probs
        epoch += 1
    scores, bins = score_tiles(best_probs, tiles.masks[va])
    return {"val_map": float(scores.mean()), "scores": scores, "bins": bins, "ids": tiles.ids[va],
            "images_seen": done * 16, "epochs": epoch, "planned_steps": horizon[0], "done_steps": done,
            "history": history, "how": f"fp32, torch threads {torch.get_num_threads()}"}


def run_harness(name: str, spec: str, data: Path, fold: int, minutes: float) -> dict:
    from mlflow.tracking import MlflowClient

    from salt_exp import contract as C
    from salt_exp.cv import best_snapshots, run_cv
    from salt_exp.stores import download_cache, tracking_uri
    from salt_exp.tracking import fetch_artifact

    cfg = harness_config(name, spec, data, minutes)
    study = f"bq-{name}"
    result = run_cv(cfg, folds=[fold], study=study)
    run_id = result.fold_runs[fold]
    snap = best_snapshots(study, {fold: run_id})[fold]
    ids, probs = C.read_snapshot_oof(fetch_artifact(snap.run_id, snap.oof, download_cache()))
    tiles, _, _ = fold_split(data)
    scores, bins = score_tiles(probs, tiles.masks[tiles.position(ids.astype(str))])
    m = MlflowClient(tracking_uri()).get_run(run_id).data.metrics
    history = [round(x.value, 4) for x in MlflowClient(tracking_uri()).get_metric_history(run_id, C.Metric.VAL_MAP)]
    return {"val_map": float(scores.mean()), "scores": scores, "bins": bins, "ids": ids.astype(str),
            "images_seen": int(m.get("done_steps", 0)) * cfg.optim.batch_size, "epochs": int(m.get("done_epochs", 0)),
            "planned_steps": int(m.get("planned_steps", 0)), "done_steps": int(m.get("done_steps", 0)),
            "history": history, "how": f"salt-exp cv, study {study}, fold run {run_id}"}


def run_part(name: str, spec: str, data: Path, fold: int, minutes: float, results: Path) -> None:
    t0 = time.perf_counter()
    out = run_smp(data, fold, minutes) if name == "smp" else run_harness(name, spec, data, fold, minutes)
    _, _, folds_file = fold_split(data)
    part = {"pipeline": name, "fold": fold, "minutes": minutes, "recipe": recipe_of(name, spec, data, minutes),
            "folds_file": folds_file, "val_map": round(out["val_map"], 6), "wall_s": round(time.perf_counter() - t0, 1),
            "images_seen": out["images_seen"], "epochs": out["epochs"], "planned_steps": out["planned_steps"],
            "done_steps": out["done_steps"], "val_map_per_epoch": out["history"], "how": out["how"],
            "machine": machine(), "commit": git_commit(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "scores": [round(float(s), 4) for s in out["scores"]], "bins": [int(b) for b in out["bins"]]}
    save_part(results, part)
    print(f"[bench-quality] {name} fold {fold}: val_map {part['val_map']:.4f}, {part['images_seen']} images, "
          f"{part['epochs']} epochs, {part['wall_s']:.0f}s -> {results}", flush=True)


# ---------------------------------------------------------------- report


def report(parts: list[dict], pipelines: list[tuple[str, str]], current: dict[str, str], minutes: float,
           folds: list[int]) -> str:
    from salt_exp.metrics import BIN_NAMES

    fresh = {(p["pipeline"], p["fold"]): p for p in parts
             if p["minutes"] == minutes and current.get(p["pipeline"]) == p["recipe"]}
    stale = sorted({(p["pipeline"], p["fold"]) for p in parts if (p["pipeline"], p["fold"]) not in fresh})
    names = [n for n, _ in pipelines]
    started = [n for n in names if any((n, f) in fresh for f in folds)]  # a pipeline with no part yet waits
    common = [f for f in folds if started and all((n, f) in fresh for n in started)]
    waiting = [n for n in names if n not in started]
    lines = [f"Budget {minutes:g} min per fold; folds trained: "
             + "; ".join(f"{n} {sorted(f for (m, f) in fresh if m == n) or 'none'}" for n in names),
             f"OOF over the folds every started pipeline has finished: {common or 'none yet'}"
             + (f" (not started yet: {', '.join(waiting)})" if waiting else ""), ""]
    head = "| pipeline | " + " | ".join(f"fold {f}" for f in folds) + " | fold mean (sd) | OOF mAP | vs smp |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    oof = {}
    for n in started:  # a pipeline with no part yet has no row: the line above names it
        cells = [f"{fresh[(n, f)]['val_map']:.4f}" if (n, f) in fresh else "-" for f in folds]
        maps = [fresh[(n, f)]["val_map"] for f in common if (n, f) in fresh]
        scores = (np.concatenate([fresh[(n, f)]["scores"] for f in common]) if common and n in started
                  else np.array([]))
        oof[n] = float(scores.mean()) if len(scores) else float("nan")
        spread = f"{statistics.fmean(maps):.4f} ({statistics.pstdev(maps):.4f})" if maps else "-"
        ratio = f"{oof[n] - oof['smp']:+.4f}" if "smp" in started and n in started and common and n != "smp" else ""
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {spread} | {oof[n]:.4f} | {ratio} |")
    if common:
        lines += ["", "OOF mAP by coverage bin (tiles):", "",
                  "| pipeline | " + " | ".join(BIN_NAMES) + " |", "|---|" + "---|" * len(BIN_NAMES)]
        for n in started:
            scores = np.concatenate([fresh[(n, f)]["scores"] for f in common])
            bins = np.concatenate([fresh[(n, f)]["bins"] for f in common])
            cells = [f"{scores[bins == b].mean():.3f} ({int((bins == b).sum())})" if (bins == b).any() else "-"
                     for b in range(len(BIN_NAMES))]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines += ["", "| pipeline | fold | images seen | epochs | steps done/planned | wall s | machine | commit |",
                  "|---|---|---|---|---|---|---|---|"]
        for n in started:
            for f in common:
                p = fresh[(n, f)]
                lines.append(f"| {n} | {f} | {p['images_seen']} | {p['epochs']} | {p['done_steps']}/"
                             f"{p['planned_steps']} | {p['wall_s']:.0f} | {p['machine']} | {p['commit']} |")
    if stale:
        lines += ["", "Stale parts (another budget or recipe), left out: " + ", ".join(f"{n} fold {f}" for n, f in stale)]
    return "\n".join(lines)


def write_docs_block(begin: str, end: str, heading: str, text: str, command: str) -> None:
    """Replace the ``begin`` .. ``end`` block of docs/BENCHMARKS.md with ``command`` and ``text`` (or append it under
    ``heading`` when absent), written to a temp file and renamed: every benchmark's report goes in this way."""
    doc = DOCS.read_text(encoding="utf-8")
    block = f"{begin}\n`{command}`\n\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    tmp = DOCS.with_suffix(".tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, DOCS)


def write_docs(text: str, command: str) -> None:
    write_docs_block(BEGIN, END, "Quality at a fixed budget (bench_quality.py)", text, command)


# ---------------------------------------------------------------- main


def parse_pipelines(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        name, _, spec = item.strip().partition("=")
        if not name or (name not in HARNESS and name != "smp" and not spec):
            sys.exit(f"--pipelines: {item!r}: expected smp, reference, cpu or NAME=CONFIG")
        if spec and not (REPO / spec).exists():
            sys.exit(f"--pipelines: {name}: config file {spec} not found")
        out.append((name, spec))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = part_parser(__doc__, RESULTS)
    ap.add_argument("--pipelines", default="smp,reference,cpu")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: NAME:FOLD in a child process
    args = ap.parse_args(argv)
    data, results = data_and_results(args)
    pipelines = parse_pipelines(args.pipelines)
    specs = dict(pipelines)
    from salt_exp.cv import parse_folds
    from salt_exp.errors import SaltError

    try:
        folds = parse_folds(args.folds, 5)
        if args.part:
            name, fold = args.part.split(":")
            run_part(name, specs.get(name, ""), data, int(fold), args.minutes, results)
            return 0
        current = {n: recipe_of(n, s, data, args.minutes) for n, s in pipelines}
        _, _, folds_file = fold_split(data)
    except SaltError as exc:
        sys.exit(f"bench_quality: {exc}")
    done = {key_of(p) for p in load_results(results)}
    todo = [(n, f) for f in folds for n, _ in pipelines
            if (n, f, args.minutes, current[n], folds_file) not in done]
    if args.max_parts is not None:
        todo = todo[:args.max_parts]
    if not args.report_only:
        rc = run_children("bench-quality", __file__, [
            (f"{name} fold {fold}: {args.minutes:g} min", ["--part", f"{name}:{fold}", "--data", str(data), "--minutes",
             str(args.minutes), "--results", str(results), "--pipelines", args.pipelines]) for name, fold in todo])
        if rc:
            return rc
    text = report(load_results(results), pipelines, current, args.minutes, folds)
    print(text)
    if args.docs:
        write_docs(text, "make bench-quality DATA=../shared/tgs" if args.minutes == 25 else
                   f"python benchmarks/bench_quality.py --minutes {args.minutes:g} --pipelines {args.pipelines}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
