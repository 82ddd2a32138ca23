"""``salt-exp viz mosaic``, ``salt-exp viz evolution`` and ``salt-exp report``: load, draw, write, log.

Files go to ``reports/<name>/`` unless told otherwise; with a run they are also logged into it
(``viz/`` and ``report/`` artifact folders), so they sit next to the numbers in the MLflow UI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_exp import contract as C
from salt_exp.data.kaggle import KaggleData, load_kaggle
from salt_exp.ensemble.build import mosaic_index
from salt_exp.ensemble.mosaic import MosaicIndex
from salt_exp.errors import SaltError
from salt_exp.io import write_json
from salt_exp.scoring import read_masks
from salt_exp.stores import download_cache, reports_dir
from salt_exp.tracking import RunTracker, run_summary
from salt_exp.viz.sources import RunOutput, champion_run, data_root_of, run_output, submission_output


@dataclass(frozen=True, kw_only=True)
class Scene:
    """Everything a mosaic drawing needs besides the predictions."""

    data: KaggleData
    index: MosaicIndex
    images: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]  # train masks, plus the test masks of solution.csv when the dataset has one
    test_ids: set[str]


def load_scene(data_root: str | Path | None) -> Scene:
    if not data_root:
        raise SaltError("--data is needed: the run does not record its data root")
    data = load_kaggle(data_root)
    index, _ = mosaic_index(data)
    if index is None:
        raise SaltError(f"{data.root}: no mosaics.csv and the jigsaw found no neighbouring tiles; nothing to draw")
    sets = [data.test, data.train] if data.test is not None else [data.train]
    images = {t: im for s in sets for t, im in zip(s.ids.tolist(), s.images, strict=True)}
    truth = dict(zip(data.train.ids.tolist(), data.train.masks, strict=True))
    solution = Path(data.root) / "solution.csv"
    if solution.exists():
        ids, masks = read_masks(solution, "solution")
        truth.update(zip(ids.tolist(), masks, strict=True))
    test_ids = set(data.test.ids.tolist()) if data.test is not None else set()
    return Scene(data=data, index=index, images=images, truth=truth, test_ids=test_ids)


def resolve_output(run: str | None, study: str | None, submission: str | None, cycle: int | None) -> RunOutput:
    """The predictions named on the command line: --run, --submission, or the --study's champion ensemble."""
    if sum(x is not None for x in (run, study, submission)) != 1:
        raise SaltError("name exactly one of --run ID, --study NAME (its champion ensemble) or --submission FILE")
    if submission is not None:
        return submission_output(submission)
    return run_output(run or champion_run(study), download_cache(), cycle)


def _out_dir(out: str | None, output: RunOutput, study: str | None) -> Path:
    if out:
        return Path(out)
    return reports_dir(study or (output.run_id[:8] if output.run_id else Path(output.label).stem))


def _log(run_id: str | None, paths: Sequence[Path], folder: str) -> None:
    if run_id is not None:
        tracker = RunTracker.attach(run_id)
        for p in paths:
            tracker.log_artifact(p, folder)


def draw_mosaics(output: RunOutput, scene: Scene, mosaic_ids: Sequence[int], out_dir: Path) -> list[Path]:
    from salt_exp.viz.mosaic_plot import pick_mosaic, render_mosaic, save_png

    pred = output.masks()
    ids = list(mosaic_ids) or [pick_mosaic(scene.index, scene.truth, pred)]
    return [save_png(render_mosaic(scene.index, m, images=scene.images, truth=scene.truth, pred=pred, title=output.label,
                                   test_ids=scene.test_ids),
                     out_dir / f"mosaic_{m}.png") for m in ids]


def mosaic_command(*, run: str | None = None, study: str | None = None, submission: str | None = None,
                   data: str | None = None, mosaic_ids: Sequence[int] = (), out: str | None = None,
                   cycle: int | None = None, log: bool = True) -> list[Path]:
    """PNG(s) of mosaics with truth, prediction and tile scores; logged to the run under viz/."""
    output = resolve_output(run, study, submission, cycle)
    scene = load_scene(data or output.data_root)
    paths = draw_mosaics(output, scene, mosaic_ids, _out_dir(out, output, study))
    _log(output.run_id if log else None, paths, C.VIZ_DIR)
    return paths


def evolution_command(study: str, *, mosaic_ids: Sequence[int] = (), out: str | None = None, run: str | None = None,
                      data: str | None = None, log: bool = True) -> list[tuple[Path, list[dict]]]:
    """One GIF per mosaic of the study's improving snapshots/ensembles; logged to the champion (or --run)."""
    from salt_exp.viz.evolution import frame_masks, improving_steps, study_frames, write_gif
    from salt_exp.viz.mosaic_plot import figure_rgb, mosaic_tiles, pick_mosaic, render_mosaic

    frames = study_frames(study)
    target = run
    if target is None and log:
        try:
            target = champion_run(study)
        except SaltError:
            target = None  # no ensemble yet: the GIFs are only written to disk
    scene = load_scene(data or data_root_of(frames[-1].parts[0][0]))
    train_ids = set(scene.data.train.ids.tolist())
    masks = frame_masks(frames, train_ids, download_cache())
    ids = list(mosaic_ids) or [pick_mosaic(scene.index, scene.truth, {t: m for fm in masks for t, m in fm.items()})]
    out_dir = Path(out) if out else reports_dir(study)
    results = []
    for m in ids:
        tiles = [t for t, _, _ in mosaic_tiles(scene.index, m) if t in train_ids]
        steps = improving_steps(frames, masks, scene.truth, tiles)
        if not steps:
            raise SaltError(f"mosaic {m}: no frame of study {study!r} predicted any of its train tiles")
        pictures, rows = [], []
        for k, s in enumerate(steps):
            title = f"{study}: step {k + 1}/{len(steps)}, {s.frame.label}"
            hatch = [t for t in tiles if t not in s.masks]
            fig = render_mosaic(scene.index, m, images=scene.images, truth=scene.truth, pred=s.masks, title=title,
                                test_ids=scene.test_ids, max_px=1400, hatch_ids=hatch)
            pictures.append(figure_rgb(fig))
            rows.append({"step": k + 1, "frame": s.frame.label, "created_ms": s.frame.created_ms, "mosaic_score": s.score})
        gif = write_gif(pictures, out_dir / f"evolution_mosaic_{m}.gif")
        write_json(out_dir / f"evolution_mosaic_{m}.json", {"study": study, "mosaic_id": m, "frames_considered": len(frames),
                                                            "steps": rows})
        _log(target if log else None, [gif, out_dir / f"evolution_mosaic_{m}.json"], C.VIZ_DIR)
        results.append((gif, rows))
    return results


def report_command(*, run: str | None = None, study: str | None = None, out: str | None = None, cycle: int | None = None,
                   data: str | None = None, worst: int = 12, log: bool = True):
    """The error-analysis report of a fold or ensemble run (default: the study's champion ensemble)."""
    from salt_exp.viz.mosaic_plot import render_mosaic
    from salt_exp.viz.report import run_context, write_report

    output = resolve_output(run, study, None, cycle)
    scene = load_scene(data or output.data_root)
    pred = output.masks()

    def draw(m: int):
        return render_mosaic(scene.index, m, images=scene.images, truth=scene.truth, pred=pred, title=output.label,
                             test_ids=scene.test_ids)

    context = run_context(run_summary(output.run_id))
    report = write_report(output, scene.data, _out_dir(out, output, study), context=context, n_worst=worst,
                          mosaic=(scene.index, draw), waterfall=_waterfall_rows(output))
    if log:
        _log(output.run_id, [report.html, *report.figures.values()], C.REPORT_DIR)
        RunTracker.attach(output.run_id).log_metrics(report.metrics(), 0)
    return report


def _waterfall_rows(output: RunOutput) -> list[dict] | None:
    """An ensemble run's waterfall table (None for a fold run, or an ensemble built before waterfalls)."""
    import json
    import tempfile

    from salt_exp.ensemble.waterfall import rows_from_table
    from salt_exp.tracking import artifact_paths, fetch_artifact

    if output.role != "ensemble" or output.run_id is None or C.ENSEMBLE_WATERFALL_TABLE not in artifact_paths(output.run_id):
        return None
    with tempfile.TemporaryDirectory(prefix="salt-exp-wf-") as tmp:
        path = fetch_artifact(output.run_id, C.ENSEMBLE_WATERFALL_TABLE, Path(tmp))
        return rows_from_table(json.loads(Path(path).read_text(encoding="utf-8")))


def study_visuals(study: str) -> list[Path]:
    """After a study's ensemble: its mosaic PNG, evolution GIF and report, all logged to the champion run."""
    paths = mosaic_command(study=study)
    paths += [gif for gif, _ in evolution_command(study)]
    paths.append(report_command(study=study).html)
    return paths
