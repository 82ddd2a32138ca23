"""Report figures beyond the bar charts of salt_exp.plots: threshold curve, worst-tile gallery."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from salt_exp.viz.analysis import MASK_TYPES, Analysis  # noqa: E402
from salt_exp.viz.mosaic_plot import PRED_COLOR, TRUTH_RGBA  # noqa: E402

FOLD_COLOURS = ("tab:olive", "tab:cyan", "tab:pink", "tab:brown", "tab:purple", "tab:gray")


def threshold_figure(a: Analysis, title: str) -> Figure:
    """Mean score of ``probs > t`` against t, with the threshold used, the best one and the final score."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(a.thresholds, a.curve, color="tab:blue", linewidth=2, label="all tiles: mean score of probs > t")
    for k, (fold, used, curve) in enumerate(a.fold_curves):
        colour = FOLD_COLOURS[k % len(FOLD_COLOURS)]
        ax.plot(a.thresholds, curve, color=colour, linewidth=0.9, alpha=0.8, label=f"fold {fold} (its t = {used:.2f})")
        ax.plot([used], [np.interp(used, a.thresholds, curve)], "o", color=colour, markersize=5)
    ax.axvline(a.best_threshold, color="black", linestyle=":", label=f"best single t = {a.best_threshold:.2f} "
               f"({float(a.curve.max()):.4f})")
    if a.used_threshold is not None:
        ax.axvline(a.used_threshold, color="tab:orange", linestyle="--", label=f"t used = {a.used_threshold:.2f} (mean over folds)")
    ax.axhline(a.score, color="tab:red", linewidth=0.8, label=f"final masks (as submitted) = {a.score:.4f}")
    curves = [a.curve, *(c for _, _, c in a.fold_curves)]
    ax.set_ylim(min(min(float(c.min()) for c in curves), a.score) - 0.03, max(max(float(c.max()) for c in curves), a.score) + 0.03)
    ax.set(title=f"{title}\nbefore post-processing", xlabel="probability threshold t",
           ylabel="competition score (mean over tiles)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center", fontsize=7, ncol=2 if a.fold_curves else 1)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _overlay(ax, image: np.ndarray, mask: np.ndarray | None, outline: np.ndarray | None) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if mask is not None:
        rgba = np.zeros((*mask.shape, 4), np.float32)
        rgba[mask != 0] = TRUTH_RGBA
        ax.imshow(rgba, interpolation="nearest")
    if outline is not None and outline.any() and not outline.all():
        ax.contour(outline.astype(np.float32), levels=[0.5], colors=[PRED_COLOR], linewidths=1.2)
    elif outline is not None and outline.all():  # a full mask has no inner contour: frame it
        ax.add_patch(plt.Rectangle((0, 0), 100, 100, fill=False, edgecolor=PRED_COLOR, linewidth=2))
    elif outline is not None:
        ax.text(50, 50, "empty", ha="center", va="center", fontsize=7, color="white",
                bbox={"facecolor": "black", "alpha": 0.5, "linewidth": 0})
    ax.set_xticks([])
    ax.set_yticks([])


def gallery_figure(a: Analysis, rows: np.ndarray, *, images: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                   depths: np.ndarray, title: str, per_row: int = 3) -> Figure:
    """Worst tiles, each as three panels: image, image + truth, image + prediction (truth faint).

    ``rows``: positions into the arrays (and into ``a``) of the tiles to show, worst first.
    """
    n = len(rows)
    lines = max(1, int(np.ceil(n / per_row)))
    fig, axes = plt.subplots(lines, 3 * per_row, figsize=(3 * per_row * 1.55, lines * 1.95 + 0.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, i in enumerate(rows):
        r, c = divmod(k, per_row)
        trio = axes[r, 3 * c:3 * c + 3]
        for ax in trio:
            ax.axis("on")
        _overlay(trio[0], images[i], None, None)
        _overlay(trio[1], images[i], truth[i], None)
        _overlay(trio[2], images[i], None, pred[i])
        cover = 100 * float(np.count_nonzero(truth[i])) / truth[i].size
        trio[0].set_title(f"{a.ids[i]}", fontsize=7, loc="left")
        trio[1].set_title(f"score {a.scores[i]:.2f}, {MASK_TYPES[a.type_index[i]]}", fontsize=7)
        trio[2].set_title(f"cov {cover:.0f}%, z {depths[i]:.0f} ft", fontsize=7)
        for ax, name in zip(trio, ("image", "truth", "prediction"), strict=True):
            ax.set_xlabel(name, fontsize=7, labelpad=1)
    handles = [Patch(facecolor=TRUTH_RGBA, label="ground truth (salt)"),
               Line2D([], [], color=PRED_COLOR, linewidth=1.6, label="prediction (outline)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8)
    fig.suptitle(f"{title}\nper tile: image | truth | prediction; titles: id, score and mask type, coverage and depth",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.94))
    plt.close(fig)
    return fig
