"""Bar charts shared by fold runs (coverage bins) and the error analysis (any grouping); matplotlib, Agg backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def coverage_bins_figure(bins: list[dict], title: str) -> Figure:
    """Mean score and share of the total error per coverage bin, side by side."""
    return breakdown_figure(bins, "bin", title, "salt coverage (%)")


def breakdown_figure(rows: list[dict], key: str, title: str, xlabel: str) -> Figure:
    """Mean score and share of the total error per group (rows of metrics.group_breakdown), side by side."""
    names = [str(r[key]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10, 1.3 * len(rows) * 2), 3.8))
    scores = [0.0 if r["count"] == 0 else r["mean_score"] for r in rows]
    ax1.bar(names, scores, color="tab:blue", label="mean score")
    for x, r in enumerate(rows):
        ax1.text(x, scores[x] + 0.01, f"n={r['count']}", ha="center", fontsize=8)
    ax1.set(title=f"mean score per {xlabel}", xlabel=xlabel, ylabel="competition score", ylim=(0, 1.25))
    ax1.legend(loc="upper right")
    shares = [100 * r["err_share"] for r in rows]
    ax2.bar(names, shares, color="tab:red", label="share of total error")
    ax2.set(title="share of the total error", xlabel=xlabel, ylabel="% of sum(1 - score)",
            ylim=(0, 1.25 * max(max(shares), 1.0)))
    ax2.legend(loc="upper left")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
