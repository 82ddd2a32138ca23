"""A reassembled mosaic as one figure: seismic image, ground truth (bluish fill), prediction (orange
outline), tile borders (dashed for test tiles), hatching where a tile has no prediction, and the
competition score of every tile that has both a truth and a prediction.

The figure has a fixed layout for a given mosaic (no tight bounding box), so the frames of an
animation line up pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from salt_exp.ensemble.mosaic import TILE, MosaicIndex  # noqa: E402
from salt_exp.io import atomic_path  # noqa: E402
from salt_exp.metrics import image_scores  # noqa: E402

TRUTH_RGBA = (0.20, 0.50, 1.00, 0.42)
PRED_COLOR = "#ff8c00"
TEST_EDGE = "#ffd54a"
EMPTY_COLOR = "#1d2733"
SCORE_CMAP = matplotlib.colormaps["RdYlGn"]
MARGINS = (0.9, 0.3, 0.75, 1.35)  # inches: left, right, top, bottom (x label + legend)


def mosaic_tiles(index: MosaicIndex, mosaic_id: int) -> list[tuple[str, int, int]]:
    """(id, row, column) of the tiles placed in a mosaic, rows/columns counted from its corner."""
    index.shape(mosaic_id)  # SaltError for an unknown mosaic
    x0, y0 = index.bounds[mosaic_id][:2]
    return sorted((t, y - y0, x - x0) for (m, x, y), t in index.tile_at.items() if m == mosaic_id)


def tile_scores(ids: Collection[str], truth: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Competition score of each id that has both a truth and a prediction."""
    both = [t for t in ids if t in truth and t in pred]
    if not both:
        return {}
    scores = image_scores(np.stack([pred[t] for t in both]), np.stack([truth[t] for t in both]))
    return dict(zip(both, scores.tolist(), strict=True))


def pick_mosaic(index: MosaicIndex, truth: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray]) -> int:
    """The mosaic with the most tiles having both a truth and a prediction (ties: the lower id)."""
    counts: dict[int, int] = {}
    for (m, _, _), t in index.tile_at.items():
        counts[m] = counts.get(m, 0) + (t in truth and t in pred)
    return min(counts, key=lambda m: (-counts[m], m))


def _scale(rows: int, cols: int, max_px: int) -> float:
    """Screen pixels per data pixel: up to 1.5 for small mosaics, down so the longest side fits max_px."""
    return float(np.clip(max_px / (max(rows, cols) * TILE), 0.2, 1.5))


def _layers(index: MosaicIndex, mosaic_id: int, *, images, truth, pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = index.assemble(mosaic_id, images)  # NaN where no tile
    truth_rgba = np.zeros((*image.shape, 4), np.float32)
    truth_rgba[index.assemble(mosaic_id, truth, fill=0) != 0] = TRUTH_RGBA
    pred_mask = index.assemble(mosaic_id, pred, fill=0).astype(np.float32)  # contour needs numbers, not bools
    return image, truth_rgba, pred_mask


def _frame(rows: int, cols: int, max_px: int) -> tuple[Figure, plt.Axes, float]:
    """A figure whose axes show the mosaic at a fixed scale, with margins for labels and the legend."""
    s = _scale(rows, cols, max_px)
    left, right, top, bottom = MARGINS
    w_in, h_in = cols * TILE * s / 100, rows * TILE * s / 100
    fig = plt.figure(figsize=(max(w_in + left + right, 6.5), h_in + top + bottom), dpi=100)
    fw, fh = fig.get_size_inches()
    return fig, fig.add_axes((left / fw, bottom / fh, w_in / fw, h_in / fh)), s


def _boxes(tiles: list[tuple[str, int, int]], keep: Collection[str]) -> list[Rectangle]:
    return [Rectangle((c * TILE - 0.5, r * TILE - 0.5), TILE, TILE) for t, r, c in tiles if t in keep]


def _draw_borders(ax: plt.Axes, tiles: list[tuple[str, int, int]], test: set[str], hatch: set[str]) -> None:
    ids = {t for t, _, _ in tiles}
    ax.add_collection(PatchCollection(_boxes(tiles, ids - test), facecolor="none", edgecolor="white", linewidth=0.5,
                                      alpha=0.6))
    ax.add_collection(PatchCollection(_boxes(tiles, ids & test), facecolor="none", edgecolor=TEST_EDGE, linewidth=0.8,
                                      linestyle="--", alpha=0.9))
    ax.add_collection(PatchCollection(_boxes(tiles, hatch), facecolor="none", edgecolor="#b0b0b0", hatch="//",
                                      linewidth=0, alpha=0.5))


def _draw_scores(ax: plt.Axes, tiles: list[tuple[str, int, int]], scores: dict[str, float], s: float) -> None:
    font = float(np.clip(9 * s, 5, 11))
    for t, r, c in tiles:
        if t in scores:
            ax.text(c * TILE + 3, r * TILE + 3, f"{scores[t]:.2f}", va="top", ha="left", fontsize=font, color="black",
                    bbox={"facecolor": SCORE_CMAP(scores[t]), "alpha": 0.85, "pad": 1, "linewidth": 0})


def _axes_text(ax: plt.Axes, rows: int, cols: int) -> None:
    step = max(1, int(np.ceil(max(rows, cols) / 12)))
    ax.set_xticks(np.arange(0, cols + 1, step) * TILE - 0.5, [str(v * TILE) for v in range(0, cols + 1, step)])
    ax.set_yticks(np.arange(0, rows + 1, step) * TILE - 0.5, [str(v * TILE) for v in range(0, rows + 1, step)])
    ax.set_xlabel("mosaic x (pixels; a tile is 101)")
    ax.set_ylabel("mosaic y (pixels; depth grows downwards)")


def _legend(fig: Figure) -> None:
    handles = [Patch(facecolor=TRUTH_RGBA, label="ground truth (salt)"),
               Line2D([], [], color=PRED_COLOR, linewidth=1.6, label="prediction (outline)"),
               Patch(facecolor="none", edgecolor="#888888", label="train tile border"),
               Patch(facecolor="none", edgecolor=TEST_EDGE, linestyle="--", label="test tile border"),
               Patch(facecolor="none", edgecolor="#888888", hatch="//", label="no prediction for the tile"),
               Patch(facecolor=SCORE_CMAP(0.9), edgecolor="none", label="tile score 0-1 (red low, green high)"),
               Patch(facecolor=EMPTY_COLOR, edgecolor="none", label="no tile image here")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=True, bbox_to_anchor=(0.5, 0.005))


def render_mosaic(index: MosaicIndex, mosaic_id: int, *, images: Mapping[str, np.ndarray],
                  truth: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray], title: str,
                  test_ids: Collection[str] = (), max_px: int = 2000, hatch_ids: Collection[str] | None = None) -> Figure:
    """Figure of one mosaic; ``truth``/``pred`` map tile id -> (101, 101) 0/1 mask (missing ids: none known).

    Only positions whose tile has an image are drawn (mosaics.csv also places tiles a dataset may
    lack, e.g. test tiles). ``hatch_ids``: tiles marked "no prediction" (default: drawn tiles missing
    from ``pred``).
    """
    placed = mosaic_tiles(index, mosaic_id)
    tiles = [x for x in placed if x[0] in images]
    rows, cols = index.shape(mosaic_id)
    fig, ax, s = _frame(rows, cols, max_px)
    image, truth_rgba, pred_mask = _layers(index, mosaic_id, images=images, truth=truth, pred=pred)
    ax.imshow(image, cmap=plt.get_cmap("gray").with_extremes(bad=EMPTY_COLOR), vmin=0, vmax=255, interpolation="nearest")
    ax.imshow(truth_rgba, interpolation="nearest")
    if pred_mask.any():
        ax.contour(pred_mask, levels=[0.5], colors=[PRED_COLOR], linewidths=max(0.8, 1.4 * s))
    hatch = {t for t, _, _ in tiles if t not in pred} if hatch_ids is None else set(hatch_ids)
    _draw_borders(ax, tiles, set(test_ids), hatch)
    scores = tile_scores([t for t, _, _ in tiles], truth, pred)
    _draw_scores(ax, tiles, scores, s)
    _axes_text(ax, rows, cols)
    mean = f"mean tile score {np.mean(list(scores.values())):.3f} over {len(scores)} tiles" if scores else "no tile scored"
    ax.set_title(f"{title}\nmosaic {mosaic_id}: {rows}x{cols} grid, {len(tiles)} tiles drawn of {len(placed)} placed; "
                 f"{mean}", fontsize=10)
    _legend(fig)
    plt.close(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG atomically (never a half-written image)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def figure_rgb(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a figure drawn by the Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
