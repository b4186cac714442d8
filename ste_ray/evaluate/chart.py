"""The bar chart of an evaluation: wellformed, api_match and correct per setting."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from ste_ray.storage import Location  # noqa: E402

METRICS = ["wellformed", "api_match", "correct"]


def bar_chart(rows: list[tuple[str, dict[str, float]]], path: Path | Location, title: str) -> None:
    """``rows``: (setting name, its metrics) in display order."""
    fig, ax = plt.subplots(figsize=(1.5 + 2.2 * len(rows), 4))
    width = 0.8 / len(METRICS)
    for k, metric in enumerate(METRICS):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        bars = ax.bar(xs, [m[metric] for _, m in rows], width, label=metric)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(rows)), [name for name, _ in rows])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Location.of(path).write_figure(fig)
    plt.close(fig)
