"""Job-directory logging: a text log, the resolved arguments, a per-epoch CSV and a PNG of the curves.

Layout under ``<job_dir>``::

    logs/<name>_<YYYYmmdd-HHMMSS>.log   "%(asctime)s | %(message)s", mirrored to the console
    config.txt                          timestamp, then "arg: value" lines (the paper's format)
    args.json                           the same arguments as JSON
    metrics.csv                         one row per epoch (METRIC_FIELDS)
    curves.png                          loss / top-1 / lr against epoch (``plot_curves``)

Only the main process (rank 0) writes anything; other ranks get a logger without handlers. Library code logs
through ``logging.getLogger("coring.<module>")``, which reaches the handlers attached here.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from coring.checkpoint import atomic_write

__all__ = ["RunLogger", "METRIC_FIELDS", "LOGGER_NAME", "get_logger", "plot_curves", "read_metrics",
           "write_json"]

LOGGER_NAME = "coring"
METRIC_FIELDS = ["epoch", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "lr",
                 "epoch_time_s", "best_top1"]
LOG_FORMAT = "%(asctime)s | %(message)s"
DATE_FORMAT = "%m/%d %I:%M:%S %p"


def get_logger(name: str | None = None) -> logging.Logger:
    """``coring`` or a child of it (``get_logger('engine')`` -> ``coring.engine``)."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (``atomic_write``); non-JSON values become strings."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class RunLogger:
    """The logger of one run in ``job_dir``; ``is_main=False`` (ranks > 0) writes nothing.

    Use as a context manager or call ``close()``: it detaches its handlers, so several runs in one process
    (tests, the quick start) do not write into each other's files. A run opened while another is open (a
    fine-tuning inside a pruning run) also writes into the outer run's log file until it closes.
    """

    def __init__(self, job_dir: str | os.PathLike, name: str = "run", *, is_main: bool = True,
                 console: bool = True, metric_fields: list[str] | None = None) -> None:
        self.job_dir = Path(job_dir)
        self.name = name
        self.is_main = is_main
        self.metric_fields = list(metric_fields or METRIC_FIELDS)
        self.metrics_path = self.job_dir / "metrics.csv"
        self.logger = get_logger()
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self._handlers: list[logging.Handler] = []
        self.log_path: Path | None = None
        if not is_main:
            self._attach(logging.NullHandler())
            return
        (self.job_dir / "logs").mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = self.job_dir / "logs" / f"{name}_{stamp}.log"
        formatter = logging.Formatter(LOG_FORMAT, datefmt=DATE_FORMAT)
        file_handler = logging.FileHandler(self.log_path, mode="a", encoding="utf-8")
        file_handler.setFormatter(formatter)
        self._attach(file_handler)
        # A run started inside another (prune.py calling run_finetune) shares the console handler of the outer one.
        if console and not any(getattr(h, "_coring_console", False) for h in self.logger.handlers):
            stream = logging.StreamHandler(sys.stdout)
            stream.setFormatter(formatter)
            stream._coring_console = True  # type: ignore[attr-defined]
            self._attach(stream)

    def _attach(self, handler: logging.Handler) -> None:
        self.logger.addHandler(handler)
        self._handlers.append(handler)

    # ------------------------------------------------------------------ text
    def info(self, msg: str, *args: Any) -> None:
        self.logger.info(msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.logger.warning(msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self.logger.error(msg, *args)

    # ------------------------------------------------------------------ arguments
    def write_config(self, args: argparse.Namespace | Mapping[str, Any]) -> None:
        """``config.txt`` (timestamp, then ``arg: value`` lines) and ``args.json`` with the resolved arguments."""
        if not self.is_main:
            return
        values = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        with open(self.job_dir / "config.txt", "w", encoding="utf-8") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S") + "\n\n")
            for key in sorted(values):
                f.write(f"{key}: {values[key]}\n")
        write_json(values, self.job_dir / "args.json")

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one epoch's row to ``metrics.csv`` (header written on first use); unknown keys are an error."""
        if not self.is_main:
            return
        unknown = set(row) - set(self.metric_fields)
        if unknown:
            raise ValueError(f"unknown metric column(s) {sorted(unknown)}; expected {self.metric_fields}")
        new = not self.metrics_path.exists() or self.metrics_path.stat().st_size == 0
        with open(self.metrics_path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.metric_fields)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.metric_fields})
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, last_epoch: int) -> int:
        """Keep only rows with ``epoch <= last_epoch`` (one per epoch, the latest); returns the rows kept.

        Called on ``--resume``: a run killed after its CSV row but before its checkpoint would otherwise list
        the redone epoch twice.
        """
        if not self.is_main or not self.metrics_path.exists():
            return 0
        rows = read_metrics(self.metrics_path)
        kept: dict[int, dict[str, str]] = {}
        for row in rows:
            try:
                epoch = int(row["epoch"])
            except (KeyError, ValueError):
                continue
            if epoch <= last_epoch:
                kept[epoch] = row
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metric_fields, extrasaction="ignore")
        writer.writeheader()
        for epoch in sorted(kept):
            writer.writerow(kept[epoch])
        atomic_write(self.metrics_path, lambda f: f.write(buffer.getvalue().encode("utf-8")))
        return len(kept)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Flush and detach this run's handlers."""
        for handler in self._handlers:
            handler.flush()
            self.logger.removeHandler(handler)
            handler.close()
        self._handlers.clear()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}" if (value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6)) else f"{value:.4f}"
    return "" if value is None else value


def read_metrics(csv_path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dicts of strings.

    A torn last row (a run killed while appending it: no line end, or fewer fields than the header) is dropped
    with a warning naming the file; so is any other row whose field count does not match the header.
    """
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    torn = len(lines) > 1 and not lines[-1].endswith(("\n", "\r"))
    if torn:
        warnings.warn(f"{csv_path}: dropping the torn last row {lines[-1].strip()!r} (no line end; the run "
                      f"stopped while writing it)", stacklevel=2)
        text = "".join(lines[:-1])
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return []
    rows = []
    for number, values in enumerate(reader, start=2):
        if not values:
            continue
        if len(values) != len(header):
            warnings.warn(f"{csv_path}: dropping row {number} ({len(values)} fields, the header has "
                          f"{len(header)})", stacklevel=2)
            continue
        rows.append(dict(zip(header, values)))
    return rows


def plot_curves(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Draw loss, top-1 and lr against epoch from ``metrics.csv`` into a PNG (matplotlib, Agg; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} has no rows to plot")

    def column(name: str) -> list[float]:
        out = []
        for row in rows:
            try:
                out.append(float(row.get(name, "")))
            except ValueError:
                out.append(math.nan)
        return out

    epochs = column("epoch")
    fig = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, column("train_loss"), marker=".", label="train")
    ax_loss.plot(epochs, column("test_loss"), marker=".", label="test")
    ax_loss.set_title("loss")
    ax_acc.plot(epochs, column("train_top1"), marker=".", label="train top-1")
    ax_acc.plot(epochs, column("test_top1"), marker=".", label="test top-1")
    ax_acc.plot(epochs, column("test_top5"), marker=".", linestyle=":", label="test top-5")
    ax_acc.set_title("accuracy (%)")
    ax_lr.plot(epochs, column("lr"), marker=".")
    ax_lr.set_title("learning rate")
    if any(v > 0 for v in column("lr")):
        ax_lr.set_yscale("log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(png_path, lambda f: fig.savefig(f, format="png"))
    return png_path
