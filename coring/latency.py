"""The one timing harness: interleaved, synchronised, repeated calls; medians and their spread.

Noise on a shared machine (other processes, an OpenMP team waiting for a preempted thread) can make one model
look slower than another that does less work. So every measurement here

* times the candidates **interleaved** (round ``r`` calls each once, the order reversed every other round), so a
  change in machine load hits all of them alike;
* repeats many times and reports the **median** with the **spread** (first and third quartiles);
* compares two models by the median of the **paired** per-round ratios (each round's baseline time over that
  round's pruned time), with its quartiles, so one slow round cannot invert a speed-up;
* records wall time (synchronised on CUDA) and this process's CPU time, which other processes disturb less;
* picks the CPU **thread count** that is fastest for the baseline (``choose_threads``): with two busy cores,
  torch's default of two threads ran 5x slower than one, and the count used is always reported.

``bench/throughput.py``, ``bench/block_efficiency.py``, ``detection/visualize.py`` and the quick start time through
this module.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["sync", "time_interleaved", "Spread", "spread", "choose_threads", "LatencyComparison",
           "compare_latency", "measure_latency", "format_comparison"]

Times = dict[str, dict[str, list[float]]]


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(calls: Mapping[str, Callable[[], Any]], device: torch.device | str, warmup: int,
                     repeats: int) -> Times:
    """Wall and process-CPU seconds of ``repeats`` calls of each function, interleaved, after ``warmup`` each.

    Returns ``{name: {"wall": [...], "cpu": [...]}}`` with one entry per round, in round order. Every other round
    calls the functions in reverse order, so none of them always runs right after the same other one.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_interleaved needs repeats >= 1 and warmup >= 0, got repeats={repeats}, "
                         f"warmup={warmup}")
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    sync(device)
    times: Times = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            calls[name]()
            sync(device)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of a sample."""

    median: float
    q1: float
    q3: float
    n: int

    def text(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """``'11.09 ms (10.80-11.40)'``: the median, then the interquartile range."""
        return (f"{self.median * scale:.{digits}f}{unit} "
                f"({self.q1 * scale:.{digits}f}-{self.q3 * scale:.{digits}f})")


def spread(values: Sequence[float]) -> Spread:
    """Median and first/third quartiles (inclusive method; a single value is its own spread)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread of an empty sample")
    if len(values) == 1:
        return Spread(values[0], values[0], values[0], 1)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(statistics.median(values), q1, q3, len(values))


def _example(input_size: int, batch_size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def choose_threads(call: Callable[[], Any], candidates: Sequence[int] | None = None, *, repeats: int = 5,
                   warmup: int = 2) -> int:
    """The CPU thread count among ``candidates`` under which ``call`` runs fastest (median wall time).

    Default candidates: 1 and torch's current count (and the CPU count, when it differs). The thread counts are
    timed interleaved like models are, so load that comes and goes affects each alike; torch's thread count is
    restored afterwards.
    """
    current = torch.get_num_threads()
    if candidates is None:
        candidates = sorted({1, current, os.cpu_count() or 1})
    candidates = sorted({int(c) for c in candidates})
    if not candidates or candidates[0] < 1:
        raise ValueError(f"thread counts must be >= 1, got {list(candidates)}")
    if len(candidates) == 1:
        return candidates[0]

    def under(threads: int) -> Callable[[], Any]:
        def run() -> Any:
            torch.set_num_threads(threads)
            return call()
        return run

    try:
        times = time_interleaved({str(t): under(t) for t in candidates}, "cpu", warmup, repeats)
    finally:
        torch.set_num_threads(current)
    return min(candidates, key=lambda t: statistics.median(times[str(t)]["wall"]))


@dataclass
class LatencyComparison:
    """Timings of several models on one input shape; the first model is the baseline of every ratio."""

    batch_size: int
    input_size: int
    device: str
    threads: int
    repeats: int
    wall: dict[str, Spread]  # seconds per batch
    cpu: dict[str, Spread]  # process CPU seconds per batch
    speedup: dict[str, Spread]  # paired per-round ratios baseline / model (wall time)
    speedup_cpu: dict[str, Spread]  # the same on process CPU time
    load_avg: tuple[float, float, float] | None = None

    def images_per_s(self, name: str) -> float:
        return self.batch_size / self.wall[name].median

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["images_per_s"] = {name: self.images_per_s(name) for name in self.wall}
        return out


def _paired(times: Times, base: str, name: str, clock: str) -> Spread:
    return spread([b / max(m, 1e-12) for b, m in zip(times[base][clock], times[name][clock])])


@torch.no_grad()
def compare_latency(models: Mapping[str, nn.Module], input_size: int, *, batch_size: int = 1,
                    device: torch.device | str = "cpu", warmup: int = 5, repeats: int = 30,
                    threads: int | Sequence[int] | None = None, channels_last: bool = False) -> LatencyComparison:
    """Time every model of ``models`` (eval mode, random ``batch_size x 3 x input_size^2`` input) interleaved.

    ``threads`` (CPU only): a count to use, candidate counts to choose from, or None for :func:`choose_threads`'s
    default candidates; the choice times the first (baseline) model. Torch's thread count is restored afterwards.
    """
    if not models:
        raise ValueError("compare_latency needs at least one model")
    device = torch.device(device)
    x = _example(input_size, batch_size, device, channels_last)
    modes = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    calls = {name: (lambda m=model: m(x)) for name, model in models.items()}
    base = next(iter(models))
    previous = torch.get_num_threads()
    try:
        if device.type == "cpu":
            if isinstance(threads, int):
                chosen = threads
            else:
                chosen = choose_threads(calls[base], threads, repeats=max(3, repeats // 6))
            torch.set_num_threads(chosen)
        times = time_interleaved(calls, device, warmup, repeats)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
        for name, model in models.items():
            model.train(modes[name])
    others = [name for name in models if name != base]
    return LatencyComparison(
        batch_size=batch_size, input_size=input_size, device=str(device), threads=used, repeats=repeats,
        wall={n: spread(t["wall"]) for n, t in times.items()}, cpu={n: spread(t["cpu"]) for n, t in times.items()},
        speedup={n: _paired(times, base, n, "wall") for n in others},
        speedup_cpu={n: _paired(times, base, n, "cpu") for n in others},
        load_avg=os.getloadavg() if hasattr(os, "getloadavg") else None)


def measure_latency(model: nn.Module, input_size: int, *, batch_size: int = 1, device: torch.device | str = "cpu",
                    warmup: int = 3, repeats: int = 10, threads: int | Sequence[int] | None = None) -> dict[str, Any]:
    """One model's median seconds per batch and the images/s it implies (see :func:`compare_latency`)."""
    result = compare_latency({"model": model}, input_size, batch_size=batch_size, device=device, warmup=warmup,
                             repeats=repeats, threads=threads)
    wall = result.wall["model"]
    return {"median_s": wall.median, "q1_s": wall.q1, "q3_s": wall.q3, "images_per_s": batch_size / wall.median,
            "batch_size": batch_size, "threads": result.threads, "repeats": repeats}


def format_comparison(result: LatencyComparison, base: str | None = None) -> str:
    """One line per model: median ms per batch with its interquartile range, images/s and the paired speed-up."""
    names = list(result.wall)
    base = base or names[0]
    where = result.device
    if result.device == "cpu":
        where += f", {result.threads} thread{'s' if result.threads != 1 else ''}"
    lines = [(f"batch {result.batch_size} at {result.input_size}x{result.input_size} ({where}; medians of "
              f"{result.repeats} interleaved calls, interquartile range in brackets)")]
    for name in names:
        line = f"  {name}: {result.wall[name].text(1e3, unit=' ms')}, {result.images_per_s(name):.0f} img/s"
        if name in result.speedup:
            line += (f", speed-up {result.speedup[name].text(digits=2, unit='x')} over {base} "
                     f"(CPU time {result.speedup_cpu[name].median:.2f}x)")
        lines.append(line)
    return "\n".join(lines)
