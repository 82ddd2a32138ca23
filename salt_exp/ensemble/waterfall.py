"""The ensemble's waterfall: what each step from the best single snapshot to the final masks gains out of fold.

A step is a set of out-of-fold masks (every OOF tile, in one order) scored with the competition metric,
over all tiles and per fold; its gain is its score minus the previous step's, with the spread of the
per-fold gains (sample standard deviation over the folds). Steps are cumulative: each one adds one thing
to the one before (a threshold search, more snapshots, SWA, h-flip TTA, one post-processing rule, the test
tiles as the rules' neighbours, the jigsaw seam check). Steps that cannot be measured out of fold (the
average over fold groups, which only the test prediction has) are rows with a note and no score.

A comparison row (a pseudo-label round against the ensemble whose labels it trained on) is scored like a
step but against the other ensemble's final per-fold scores; a side row (a step tried but not taken, e.g. the
plain mean of every candidate snapshot where the greedy selection kept fewer) against the last chained step.
Neither is part of the cumulative chain.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from salt_exp.metrics import image_scores


@dataclass(frozen=True)
class Step:
    name: str  # short key: metric names use it (wf_<name>)
    label: str  # what the step adds, for tables and the chart
    score: float | None  # mean over every OOF tile; None: not measurable out of fold
    folds: dict[int, float] = field(default_factory=dict)  # per-fold mean score
    gain: float | None = None  # score - previous score (the chain), or - the compared score
    gain_folds: dict[int, float] = field(default_factory=dict)
    note: str = ""
    chained: bool = True  # False: a comparison row, outside the cumulative chain

    @property
    def gain_sd(self) -> float | None:
        vals = list(self.gain_folds.values())
        return statistics.stdev(vals) if len(vals) > 1 else None

    def row(self) -> dict:
        sd = self.gain_sd
        return {"step": self.name, "label": self.label, "score": self.score, "gain": self.gain,
                "gain_sd_over_folds": sd, "folds": {str(k): v for k, v in sorted(self.folds.items())},
                "gain_folds": {str(k): v for k, v in sorted(self.gain_folds.items())}, "note": self.note,
                "chained": self.chained}


class Waterfall:
    """Steps scored against one truth; ``fold`` gives each OOF tile's fold (the per-fold scores)."""

    def __init__(self, truth: np.ndarray, fold: np.ndarray) -> None:
        self.truth, self.fold = truth, np.asarray(fold)
        self.steps: list[Step] = []

    def _last(self) -> Step | None:
        chained = [s for s in self.steps if s.chained and s.score is not None]
        return chained[-1] if chained else None

    def per_fold(self, scores: np.ndarray) -> dict[int, float]:
        return {int(f): float(scores[self.fold == f].mean()) for f in np.unique(self.fold)}

    def add(self, name: str, label: str, masks: np.ndarray, note: str = "") -> Step:
        """A chained step: ``masks`` (N, 101, 101) of every OOF tile, in the truth's order."""
        scores = image_scores(masks, self.truth)
        folds, prev = self.per_fold(scores), self._last()
        gain = None if prev is None else float(scores.mean()) - prev.score
        gain_folds = {} if prev is None else {f: s - prev.folds[f] for f, s in folds.items() if f in prev.folds}
        step = Step(name, label, float(scores.mean()), folds, gain, gain_folds, note)
        self.steps.append(step)
        return step

    def side(self, name: str, label: str, masks: np.ndarray, note: str = "") -> Step:
        """A step tried but not taken: scored and compared with the last chained step, outside the chain."""
        scores = image_scores(masks, self.truth)
        folds, prev = self.per_fold(scores), self._last()
        gain = None if prev is None else float(scores.mean()) - prev.score
        gain_folds = {} if prev is None else {f: s - prev.folds[f] for f, s in folds.items() if f in prev.folds}
        step = Step(name, label, float(scores.mean()), folds, gain, gain_folds, note, chained=False)
        self.steps.append(step)
        return step

    def note(self, name: str, label: str, note: str) -> Step:
        """A row that cannot be scored out of fold (it stays in the table with its reason)."""
        step = Step(name, label, None, note=note)
        self.steps.append(step)
        return step

    def compare(self, name: str, label: str, other_folds: dict[int, float], note: str = "") -> Step | None:
        """The final step against another ensemble's per-fold final scores (the folds both have); None when
        they share no fold or there is no final step."""
        last = self._last()
        if last is None:
            return None
        shared = sorted(set(last.folds) & set(other_folds))
        if not shared:
            return None
        sizes = {f: int((self.fold == f).sum()) for f in shared}
        total = sum(sizes.values())
        other = sum(other_folds[f] * sizes[f] for f in shared) / total
        mine = sum(last.folds[f] * sizes[f] for f in shared) / total
        step = Step(name, label, mine, {f: last.folds[f] for f in shared}, mine - other,
                    {f: last.folds[f] - other_folds[f] for f in shared}, note, chained=False)
        self.steps.append(step)
        return step

    @property
    def first(self) -> Step | None:
        return next((s for s in self.steps if s.chained and s.score is not None), None)

    @property
    def total_gain(self) -> float | None:
        first, last = self.first, self._last()
        return None if first is None or last is None else last.score - first.score

    def rows(self) -> list[dict]:
        return [s.row() for s in self.steps]

    def metrics(self) -> dict[str, float]:
        """``wf_<step>`` scores and ``wf_gain_<step>`` gains for the run; ``wf_total_gain`` final minus first."""
        out: dict[str, float] = {}
        for s in self.steps:
            if s.score is not None:
                out[f"wf_{s.name}"] = s.score
            if s.gain is not None:
                out[f"wf_gain_{s.name}"] = s.gain
        if self.total_gain is not None:
            out["wf_total_gain"] = self.total_gain
        return out


def table_columns(rows: list[dict]) -> dict[str, list]:
    """The rows as an MLflow table (columns of plain values; the per-fold dicts as JSON text)."""
    import json

    keys = ["step", "label", "score", "gain", "gain_sd_over_folds", "note", "chained", "folds", "gain_folds"]
    return {k: [json.dumps(r[k]) if isinstance(r[k], dict) else r[k] for r in rows] for k in keys}


def rows_from_table(table: dict) -> list[dict]:
    """The inverse of :func:`table_columns` over MLflow's ``{"columns", "data"}`` table format."""
    import json

    rows = [dict(zip(table["columns"], values, strict=True)) for values in table["data"]]
    for r in rows:
        for k in ("folds", "gain_folds"):
            r[k] = {int(f): v for f, v in json.loads(r[k]).items()}
    return rows


def waterfall_figure(rows: list[dict], title: str):
    """A waterfall chart of :meth:`Waterfall.rows`: the first step as a bar from zero, every chained gain as a
    floating bar (green up, red down) with the spread over folds as an error bar; comparison rows hatched."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    shown = [r for r in rows if r["score"] is not None]
    fig = Figure(figsize=(max(6.0, 1.1 * len(shown) + 2), 4.6))
    ax = fig.add_subplot(1, 1, 1)
    level = None
    lows = []
    for k, r in enumerate(shown):
        if level is None or r["gain"] is None:
            bottom, height, colour = 0.0, r["score"], "#4c72b0"
        else:
            start = level if r["chained"] else r["score"] - r["gain"]
            bottom, height = start, r["gain"]
            colour = "#55a868" if r["gain"] >= 0 else "#c44e52"
        ax.bar(k, height, bottom=bottom, color=colour, hatch=None if r["chained"] else "//", edgecolor="black",
               linewidth=0.5)
        if r["gain"] is not None and r["gain_sd_over_folds"] is not None:
            ax.errorbar(k, bottom + height, yerr=r["gain_sd_over_folds"], color="black", capsize=3, linewidth=1)
        text = f"{r['score']:.4f}" if r["gain"] is None else f"{r['gain']:+.4f}"
        ax.annotate(text, (k, max(bottom, bottom + height)), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")
        lows.append(min(bottom + height, r["score"]) if r["gain"] is not None else r["score"])
        if r["chained"]:
            level = r["score"]
    ax.set_xticks(range(len(shown)), [r["label"] for r in shown], rotation=30, ha="right", fontsize=8)
    if shown:
        top = max(r["score"] for r in shown)
        low = min(lows + [top])
        pad = max(0.01, 0.15 * (top - low))
        ax.set_ylim(max(0.0, low - 3 * pad), min(1.0, top + 2 * pad))
    ax.set_ylabel("out-of-fold mAP")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def save_waterfall_png(rows: list[dict], title: str, path: Path) -> Path:
    from salt_exp.viz.mosaic_plot import save_png

    return save_png(waterfall_figure(rows, title), path)
