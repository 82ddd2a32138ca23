"""The error-analysis report of a fold run or an ensemble run: PNGs plus one self-contained HTML page.

Analyses the run's out-of-fold masks (a fold run: its best snapshot at 0.5; an ensemble: its stored,
post-processed OOF masks) by coverage bin, depth band and mask type, shows the worst tiles, the
threshold curve of the stored probabilities and the mosaic holding the most error.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_exp.contract import RunSummary, Tag
from salt_exp.data.kaggle import KaggleData
from salt_exp.errors import SaltError
from salt_exp.io import atomic_open
from salt_exp.plots import breakdown_figure
from salt_exp.viz.analysis import MASK_TYPES, Analysis, analyse
from salt_exp.viz.figures import gallery_figure, threshold_figure
from salt_exp.viz.html import Section, render_page
from salt_exp.viz.mosaic_plot import save_png
from salt_exp.viz.sources import RunOutput

SECTIONS = ("summary", "waterfall", "coverage", "depth", "mask-type", "threshold", "gallery", "mosaic")


@dataclass(frozen=True)
class Report:
    html: Path
    figures: dict[str, Path]  # section id -> PNG
    analysis: Analysis
    mosaic_id: int | None

    def metrics(self) -> dict[str, float]:
        """Numbers worth comparing across runs in the MLflow UI (groups without tiles are left out)."""
        a = self.analysis
        out = {"analysis_map": a.score, "analysis_empty_fp": a.empty_fp, "analysis_nonempty_fn": a.nonempty_fn}
        out.update({f"analysis_map_type_{r['type']}": r["mean_score"] for r in a.types if r["count"]})
        out.update({f"analysis_map_depth_band{k}": r["mean_score"] for k, r in enumerate(a.depth) if r["count"]})
        return out


def _rows(rows: list[dict]) -> list[dict]:
    return [{**r, "err_share": f"{100 * r['err_share']:.1f}%"} for r in rows]


def run_context(summary: RunSummary) -> dict[str, str]:
    """What made the analysed predictions, from the run's tags and params (for the summary table)."""
    tags, params = summary.tags, summary.params
    keys = [("git commit", tags.get(Tag.GIT_COMMIT)), ("config hash", tags.get(Tag.CONFIG_HASH)),
            ("encoder", tags.get(Tag.ENCODER)), ("ensemble members", params.get("members")),
            ("post-processing rules applied", params.get("rules_applied")), ("threshold rule", params.get("threshold"))]
    return {k: v for k, v in keys if v}


def _summary(output: RunOutput, a: Analysis, context: dict[str, str]) -> Section:
    facts = [("source", output.label), ("run", output.run_id or "-"), ("role", output.role),
             ("data", output.data_root or "-"), ("tiles analysed (out-of-fold)", len(a.ids)),
             ("score of the final masks", a.score),
             ("threshold used (mean over folds)", "-" if a.used_threshold is None else a.used_threshold),
             ("best threshold before post-processing", "-" if a.best_threshold is None else a.best_threshold),
             ("empty tiles predicted with salt", a.empty_fp), ("salt tiles predicted empty", a.nonempty_fn),
             *context.items()]
    return Section(id="summary", heading="Summary", text="Out-of-fold tiles only: every number below is measured on "
                   "tiles the models did not train on.", table=[{"what": k, "value": v} for k, v in facts])


def write_report(output: RunOutput, data: KaggleData, out_dir: Path, *, context: dict[str, str] | None = None,
                 n_worst: int = 12, mosaic=None, waterfall: list[dict] | None = None) -> Report:
    """Analyse ``output.oof`` against the train masks; write PNGs and ``report.html`` into ``out_dir``.

    ``mosaic``: (MosaicIndex, render callable) or None; the callable draws a mosaic id to a Figure.
    ``waterfall``: an ensemble's step rows (:mod:`salt_exp.ensemble.waterfall`), shown as a chart and a table.
    """
    if output.oof is None:
        raise SaltError(f"{output.label}: no out-of-fold predictions to analyse (a submission has no truth here)")
    oof = output.oof
    pos = data.train.position(oof.ids)
    images, truth, depths = data.train.images[pos], data.train.masks[pos], data.train.depths[pos]
    a = analyse(oof.ids, oof.pred, truth, images=images, depths=depths, probs=oof.probs, used_threshold=oof.threshold,
                fold=oof.fold, tile_threshold=oof.tile_threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = output.label
    figs = {
        "coverage": save_png(breakdown_figure(a.coverage, "bin", f"{name}: by salt coverage", "salt coverage (%)"),
                          out_dir / "coverage.png"),
        "depth": save_png(breakdown_figure(a.depth, "band", f"{name}: by depth band (equal-count bands)", "depth band"),
                       out_dir / "depth.png"),
        "mask-type": save_png(breakdown_figure(a.types, "type", f"{name}: by mask type", "mask type"),
                           out_dir / "mask_types.png"),
    }
    if waterfall:
        from salt_exp.ensemble.waterfall import waterfall_figure

        figs["waterfall"] = save_png(waterfall_figure(waterfall, f"{name}: out-of-fold gain per step"),
                                     out_dir / "waterfall.png")
    if a.curve is not None:
        figs["threshold"] = save_png(threshold_figure(a, f"{name}: threshold curve (out-of-fold)"), out_dir / "threshold.png")
    worst = a.worst(n_worst)
    figs["gallery"] = save_png(gallery_figure(a, worst, images=images, truth=truth, pred=oof.pred, depths=depths,
                                              title=f"{name}: the {len(worst)} worst tiles"),
                               out_dir / "worst_tiles.png")
    mosaic_id = None
    if mosaic is not None:
        index, draw = mosaic
        mosaic_id = worst_mosaic(index, a)
        if mosaic_id is not None:
            figs["mosaic"] = save_png(draw(mosaic_id), out_dir / f"mosaic_{mosaic_id}.png")
    sections = _sections(output, a, figs, worst, depths=depths, context=context or {}, mosaic_id=mosaic_id)
    if waterfall:
        sections.insert(1, _waterfall_section(waterfall, figs["waterfall"]))
    page = render_page(f"Error analysis: {name}", f"salt-exp report, generated {dt.datetime.now().isoformat(timespec='seconds')}",
                       sections)
    html_path = out_dir / "report.html"
    with atomic_open(html_path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return Report(html_path, figs, a, mosaic_id)


def _waterfall_section(rows: list[dict], png: Path) -> Section:
    def fmt(v, sign: bool = False) -> str:
        return "-" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")

    table = [{"step": r["label"], "OOF mAP": fmt(r["score"]), "gain": fmt(r["gain"], True),
              "sd over folds": fmt(r["gain_sd_over_folds"]), "note": r["note"]} for r in rows]
    return Section(id="waterfall", heading="Ensemble waterfall",
                   text="Each step adds one thing to the one before, all out of fold; the gain's spread is the "
                   "standard deviation of the per-fold gains. Hatched: a comparison with another ensemble.",
                   table=table, figures=[(png, "out-of-fold mAP gained by each ensemble step")])


def worst_mosaic(index, a: Analysis) -> int | None:
    """The mosaic whose analysed tiles sum the most error (1 - score); None if no analysed tile is placed."""
    err: dict[int, float] = {}
    for tid, s in zip(a.ids.tolist(), a.scores.tolist(), strict=True):
        if tid in index:
            m = index.position[tid][0]
            err[m] = err.get(m, 0.0) + 1.0 - s
    return min(err, key=lambda m: (-err[m], m)) if err else None


def _sections(output: RunOutput, a: Analysis, figs: dict[str, Path], worst: np.ndarray, *, depths: np.ndarray,
              context: dict[str, str], mosaic_id: int | None) -> list[Section]:
    thr_text = ("Mean score of the stored probabilities thresholded at t, before post-processing; the red line is "
                "the score of the final masks.") if a.curve is not None else "No probabilities stored: no curve."
    gallery_rows = [{"id": a.ids[i], "score": float(a.scores[i]), "type": MASK_TYPES[a.type_index[i]],
                     "depth (ft)": f"{depths[i]:.0f}"} for i in worst]
    out = [
        _summary(output, a, context),
        Section(id="coverage", heading="By salt coverage",
                text="Share of the error: the bin's part of the sum of (1 - score).", table=_rows(a.coverage),
                figures=[(figs["coverage"], "mean score and share of the error per coverage bin")]),
        Section(id="depth", heading="By depth band", text="Bands hold about equally many tiles.", table=_rows(a.depth),
                figures=[(figs["depth"], "mean score and share of the error per depth band")]),
        Section(id="mask-type", heading="By mask type",
                text="blank: one-value image; empty: no salt; vertical: bottom 30 rows equal, "
                "neither empty nor full; cap: last row all salt; other: the rest (first match wins).",
                table=_rows(a.types), figures=[(figs["mask-type"], "mean score and share of the error per mask type")]),
        Section(id="threshold", heading="Threshold curve", text=thr_text, table=[],
                figures=[(figs["threshold"], "score against the probability threshold")] if "threshold" in figs else []),
        Section(id="gallery", heading="Worst tiles", text="Lowest-scoring tiles, ties by id.", table=gallery_rows,
                figures=[(figs["gallery"], "worst tiles: image, truth, prediction")]),
    ]
    if mosaic_id is not None:
        out.append(Section(id="mosaic", heading=f"Mosaic {mosaic_id}",
                           text="The mosaic whose analysed tiles hold the most error.", table=[],
                           figures=[(figs["mosaic"], f"mosaic {mosaic_id} with truth, prediction and tile scores")]))
    return out
