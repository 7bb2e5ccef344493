"""What a detection run leaves for a reader: ``curves.png`` (loss, APs and lr per epoch) and the best epoch.

``plot_detection_curves(metrics_csv, png)`` draws the rows ``detection/train.py`` appends to ``metrics.csv``;
``best_epoch(rows, metric)`` picks the epoch with the highest value of the run's primary metric.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from coring.checkpoint import atomic_write
from coring.run_logging import read_metrics

__all__ = ["plot_detection_curves", "best_epoch", "AP_COLUMNS"]

#: The AP columns of ``metrics.csv`` that a plot shows when present.
AP_COLUMNS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "keypoints_AP", "keypoints_AP50")


def _column(rows: Sequence[dict[str, str]], name: str) -> list[float]:
    out = []
    for row in rows:
        try:
            out.append(float(row.get(name) or "nan"))
        except ValueError:
            out.append(math.nan)
    return out


def best_epoch(rows: Sequence[dict[str, str]], metric: str) -> tuple[int, float] | None:
    """``(epoch, value)`` of the highest ``metric`` in ``metrics.csv`` rows (the first on ties); None if absent."""
    scored = [(float(row["epoch"]), value) for row, value in zip(rows, _column(rows, metric))
              if not math.isnan(value)]
    if not scored:
        return None
    epoch, value = max(scored, key=lambda pair: (pair[1], -pair[0]))
    return int(epoch), value


def plot_detection_curves(metrics_csv: str | os.PathLike, png: str | os.PathLike) -> Path:
    """Training loss, the COCO APs and the learning rate against epoch, side by side (written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_csv)
    if not rows:
        raise ValueError(f"{metrics_csv} has no rows to plot")
    epochs = _column(rows, "epoch")
    fig = Figure(figsize=(12, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_ap, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, _column(rows, "train_loss"), marker=".")
    ax_loss.set_title("training loss (sum of the heads')")
    for name in AP_COLUMNS:
        values = _column(rows, name)
        if any(not math.isnan(v) for v in values):
            ax_ap.plot(epochs, values, marker=".", label=name.replace("_", " "),
                       linestyle="-" if name.endswith("_AP") else ":")
    ax_ap.set_title("COCO AP on val")
    ax_ap.set_ylim(-0.02, 1.02)
    ax_ap.legend(fontsize=7, loc="upper left")
    ax_lr.plot(epochs, _column(rows, "lr"), marker=".")
    ax_lr.set_title("learning rate (end of epoch)")
    for ax in (ax_loss, ax_ap, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    atomic_write(png, lambda f: fig.savefig(f, format="png"))
    return Path(png)
