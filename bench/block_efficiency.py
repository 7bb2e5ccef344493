"""Where a pruned ResNet-50 loses speed: time each part alone and compare its GMAC/s with the unpruned one.

    python bench/block_efficiency.py                       # 1 thread, batch 1, default rate
    python bench/block_efficiency.py --threads 2 --batch-size 16 --png bench/results/blocks.png

The stem, every bottleneck block and the head of both models are traced and frozen with oneDNN fusion (the
``--mode jit`` deployment of ``bench/throughput.py``), fed the activations the previous part produced, and timed
interleaved (median of ``--repeats``). For each part it prints milliseconds, multiply-accumulates per second, the
FLOPs ratio and the time ratio: a pruned part whose time ratio falls short of its FLOPs ratio runs its thinner
convolutions less efficiently.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from bench.throughput import DEFAULT_RATE, _jit, fold_batchnorm
from coring.cli import Parser
from coring.counting import conv_linear_macs
from coring.latency import time_interleaved
from models import build_model

__all__ = ["model_parts", "run", "main"]


def model_parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for the stem, each bottleneck block and the head of a ``models`` ResNet-50."""
    parts: list[tuple[str, nn.Module]] = [("stem", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool))]
    for s, stage in enumerate(model.stages(), start=1):
        parts += [(f"layer{s}.{b}", block) for b, block in enumerate(stage)]
    parts.append(("head", nn.Sequential(model.avgpool, nn.Flatten(), model.fc)))
    return parts


def _median_seconds(calls: dict[str, Any], repeats: int) -> dict[str, float]:
    times = time_interleaved(calls, "cpu", 0, repeats)  # the toolkit's one timing harness
    return {name: statistics.median(t["wall"]) for name, t in times.items()}


@torch.inference_mode()
def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every part of both models; prints a table and returns its rows."""

    torch.set_num_threads(args.threads)
    models = {name: fold_batchnorm(build_model("resnet_50", rate).eval()).to(memory_format=torch.channels_last)
              for name, rate in (("unpruned", None), ("pruned", args.compress_rate))}
    x = torch.rand(args.batch_size, 3, args.input_size, args.input_size).contiguous(memory_format=torch.channels_last)
    inputs = {name: x for name in models}
    rows = []
    print(f"{args.threads} threads, batch {args.batch_size}, rate {args.compress_rate}")
    print(f"{'part':10} {'unpruned ms':>11} {'GMAC/s':>7} {'pruned ms':>10} {'GMAC/s':>7} {'FLOPs ratio':>11} "
          f"{'time ratio':>10}")
    for (name, unpruned), (_, pruned) in zip(model_parts(models["unpruned"]), model_parts(models["pruned"])):
        parts = {"unpruned": unpruned.eval(), "pruned": pruned.eval()}
        macs = {k: conv_linear_macs(m, inputs[k]) for k, m in parts.items()}
        traced = {k: _jit(m, inputs[k]) for k, m in parts.items()}
        calls = {k: (lambda f=f, k=k: f(inputs[k])) for k, f in traced.items()}
        _median_seconds(calls, 3)  # warm-up
        seconds = _median_seconds(calls, args.repeats)
        row = {"part": name, "seconds": seconds, "macs": macs,
               "gmac_per_s": {k: macs[k] / seconds[k] / 1e9 for k in parts},
               "flops_ratio": macs["unpruned"] / macs["pruned"], "time_ratio": seconds["unpruned"] / seconds["pruned"]}
        rows.append(row)
        print(f"{name:10} {seconds['unpruned'] * 1e3:11.2f} {row['gmac_per_s']['unpruned']:7.1f} "
              f"{seconds['pruned'] * 1e3:10.2f} {row['gmac_per_s']['pruned']:7.1f} {row['flops_ratio']:11.2f} "
              f"{row['time_ratio']:10.2f}", flush=True)
        inputs = {k: parts[k](inputs[k]) for k in parts}
    total = {k: sum(r["seconds"][k] for r in rows) for k in models}
    macs = {k: sum(r["macs"][k] for r in rows) for k in models}
    print(f"{'total':10} {total['unpruned'] * 1e3:11.2f} {macs['unpruned'] / total['unpruned'] / 1e9:7.1f} "
          f"{total['pruned'] * 1e3:10.2f} {macs['pruned'] / total['pruned'] / 1e9:7.1f} "
          f"{macs['unpruned'] / macs['pruned']:11.2f} {total['unpruned'] / total['pruned']:10.2f}")
    if args.png:
        _chart(rows, args.png)
    return rows


def _chart(rows: list[dict[str, Any]], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = range(len(rows))
    for k, name in enumerate(("unpruned", "pruned")):
        ax.bar([x + 0.4 * k for x in xs], [r["gmac_per_s"][name] for r in rows], 0.4, label=name)
    ax.set_xticks([x + 0.2 for x in xs], [r["part"] for r in rows], rotation=60, fontsize=7)
    ax.set_ylabel("GMAC / s")
    ax.set_title("ResNet-50 part by part: compute rate of the unpruned and the pruned model", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compress_rate", "--compress-rate", "-cpr", default=DEFAULT_RATE, help="ResNet-50 rates")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=21, help="timed calls per part and model")
    p.add_argument("--png", default=None, help="bar chart of GMAC/s per part here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    run(get_args_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
