"""Figures a fold run logs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def coverage_bins_figure(bins: list[dict], title: str) -> Figure:
    """Mean score and share of the total error per coverage bin, side by side."""
    names = [b["bin"] for b in bins]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    scores = [0.0 if b["count"] == 0 else b["mean_score"] for b in bins]
    ax1.bar(names, scores, color="tab:blue", label="mean score")
    for x, b in enumerate(bins):
        ax1.text(x, scores[x] + 0.01, f"n={b['count']}", ha="center", fontsize=8)
    ax1.set(title="mean score per coverage bin", xlabel="salt coverage (%)", ylabel="competition score", ylim=(0, 1.25))
    ax1.legend(loc="upper right")
    shares = [100 * b["err_share"] for b in bins]
    ax2.bar(names, shares, color="tab:red", label="share of total error")
    ax2.set(title="share of the total error", xlabel="salt coverage (%)", ylabel="% of sum(1 - score)",
            ylim=(0, 1.25 * max(max(shares), 1.0)))
    ax2.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
