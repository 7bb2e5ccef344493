"""Measured speed-up of pruning against the FLOPs ratio: ResNet-50 classification and Faster R-CNN detection.

    python bench/throughput.py                      # CPU (and CUDA when present), default rate
    python bench/throughput.py --compress_rate "[0.]+[0.1]*3+[0.35]*16" --size 800 --json out.json --png out.png

For each task the unpruned and the pruned model (``--compress_rate``, 20 ResNet-50 rates) run in eval mode under
``inference_mode`` on random inputs through ``coring.latency.time_interleaved`` (the toolkit's one timing harness):
``--warmup`` untimed calls, then ``--repeats`` timed calls per batch size, alternating the models (the order reversed
every other round) so that a change in machine load hits all of them; the median time gives images/s, and each
speed-up is printed with the interquartile range of the paired per-round ratios.
Detection adds a third model, ``pruned+fpn``: the pruned backbone with the FPN and RPN narrowed by ``--fpn-rate``
(default 0.5) and their channels chosen by CORING (``detection.fpn_pruning``), because backbone pruning alone cannot
speed a detector up by more than its FLOPs ratio (about 1.46x at 800x800, FPN and heads unchanged).
Batch sizes: 1 and ``--batch-size`` (classification, 224x224) or ``--det-batch-size`` (detection, ``--size``
squared images; ``min_size = max_size = size`` so the detector does not resize). On CUDA timings are
synchronised and ``--amp`` (bfloat16 autocast) is optional.

All models get the same deployment (``--mode``): ``eager`` as built; ``fold`` BatchNorm folded into the preceding
convolution and channels_last; ``jit`` (default, the fastest on CPU for every model) in addition traces and freezes
the ResNet-50 (the whole classifier, the detector's four backbone stages) with oneDNN graph fusion on CPU. Besides
wall time, the process CPU time of every call is recorded: on a loaded machine (load average above the core count,
printed) the CPU-time speed-up is the steadier estimate; ``--threads 1`` avoids OpenMP threads waiting for each
other there. By default each task is measured with 1 thread, then with torch's default thread count when it is
larger (``--threads 2 4`` picks others). For detection, a per-part CPU-time
breakdown at batch 1 (resize/normalise, backbone, FPN, RPN, ROI heads) shows what pruning can and cannot speed up.

FLOPs (multiply-accumulates): classification ``coring.counting.count_complexity`` (min of thop and ptflops) at
224, and, for the record, the ratio with every conv's channels rounded up to the CPU's SIMD block of 8 (oneDNN's
blocked layouts on AVX/AVX2 compute padded channels, so widths such as 25 or 51 cost as much as 32 or 56);
detection thop on the whole detector at ``--size`` (backbone, FPN, RPN and ROI heads; RoIAlign and NMS are not
counted) and, separately, on backbone+FPN. The detector's random weights still produce the usual 1000 RPN
proposals, so its box-head cost is the real one.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from coring.cli import Parser
from coring.counting import conv_linear_macs, count_complexity
from coring.latency import spread, sync, time_interleaved
from detection.detectors import fasterrcnn
from detection.fpn_pruning import prune_fpn
from models import build_model

__all__ = ["get_args_parser", "fold_batchnorm", "deploy", "classification_models",
           "detection_models", "padded_macs", "detection_breakdown", "run", "main"]

DEFAULT_RATE = "[0.]+[0.5]*3+[0.6]*16"


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compress_rate", "--compress-rate", "-cpr", default=DEFAULT_RATE, help="ResNet-50 rates")
    p.add_argument("--tasks", nargs="+", default=["classification", "detection"],
                   choices=["classification", "detection"])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    p.add_argument("--batch-size", type=int, default=16, help="the larger classification batch")
    p.add_argument("--det-batch-size", type=int, default=2, help="the larger detection batch")
    p.add_argument("--size", type=int, default=800, help="detection input: size x size")
    p.add_argument("--input-size", type=int, default=224, help="classification input")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model and batch size")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per model and batch size (classification)")
    p.add_argument("--det-repeats", type=int, default=5, help="timed calls per model and batch size (detection)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="CPU thread counts to measure, each in turn (default: 1, then torch's choice if more)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--fpn-rate", type=float, default=0.5,
                   help="detection: FPN/RPN channels removed in the 'pruned+fpn' model (0: leave it out)")
    p.add_argument("--mode", default="jit", choices=["eager", "fold", "jit"],
                   help="deployment of both models: as built, BN folded + channels_last, or also traced (oneDNN)")
    p.add_argument("--proposals", type=int, default=1000, help="RPN proposals kept at test time (torchvision: 1000)")
    p.add_argument("--no-flops", action="store_true", help="skip FLOPs counting (thop on a detector is slow)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--png", default=None, help="bar chart of images/s here")
    return p


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm (plain or frozen) that directly follows a Conv2d among siblings into that conv.

    Covers the stem, every Bottleneck (``convN``/``bnN``) and ``downsample = Sequential(conv, bn)``; the folded
    BatchNorm becomes ``nn.Identity``. Eval mode only; returns ``module`` changed in place.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.ops import FrozenBatchNorm2d

    previous: tuple[str, nn.Module] | None = None
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm2d, FrozenBatchNorm2d)) and previous and isinstance(previous[1], nn.Conv2d):
            setattr(module, previous[0], fuse_conv_bn_eval(previous[1].eval(), child.eval()))
            setattr(module, name, nn.Identity())
        else:
            fold_batchnorm(child)
        previous = (name, child)
    return module


def _jit(module: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Trace and freeze a tensor -> tensor module (oneDNN graph fusion on CPU)."""
    if sample.device.type == "cpu":
        torch.jit.enable_onednn_fusion(True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(module.eval(), sample))


def deploy(task: str, model: nn.Module, mode: str, device: torch.device, size: int) -> nn.Module:
    """``model`` on ``device`` in eval mode, as ``--mode`` says (identical treatment for both models)."""
    model = model.to(device).eval()
    if mode == "eager":
        return model
    model = fold_batchnorm(model).to(memory_format=torch.channels_last)
    if mode == "jit":
        x = torch.rand(1, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        if task == "classification":
            return _jit(model, x)
        body = model.backbone.body
        x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            traced = _jit(getattr(body, stage), x)
            x = traced(x)
            setattr(body, stage, traced)
    return model


def classification_models(rate: str) -> dict[str, nn.Module]:
    return {"unpruned": build_model("resnet_50"), "pruned": build_model("resnet_50", rate)}


def detection_models(rate: str, size: int, proposals: int = 1000, fpn_rate: float = 0.0) -> dict[str, nn.Module]:
    """Faster R-CNN unpruned, on the pruned backbone and, when ``fpn_rate`` > 0, with a CORING-pruned FPN too."""

    kwargs = {"min_size": size, "max_size": size, "norm_layer": "bn", "rpn_post_nms_top_n_test": proposals}
    torch.manual_seed(0)
    models = {"unpruned": fasterrcnn(None, **kwargs)}
    torch.manual_seed(0)
    models["pruned"] = fasterrcnn(rate, **kwargs)
    if fpn_rate > 0:
        models["pruned+fpn"] = fasterrcnn(rate, fpn_rate=fpn_rate, **kwargs)
        prune_fpn(models["pruned"].eval(), models["pruned+fpn"])
    return models


def padded_macs(model: nn.Module, input_size: int, block: int = 8) -> int:
    """Conv and linear multiply-accumulates of one image with every conv's channels (but the image's 3) rounded up
    to ``block``."""

    return conv_linear_macs(model.eval(), torch.rand(1, 3, input_size, input_size), channel_block=block)


def _thop_macs(model: nn.Module, inputs: tuple) -> int:
    from thop import profile

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _ = profile(copy.deepcopy(model).eval(), inputs=inputs, verbose=False)
    return int(macs)


def _ratios(counts: dict[str, float]) -> dict[str, float]:
    return {name: counts["unpruned"] / c for name, c in counts.items() if name != "unpruned"}


def _flops(task: str, models: dict[str, nn.Module], args: argparse.Namespace) -> dict[str, Any]:
    if args.no_flops:
        return {}
    if task == "classification":
        counts = {n: count_complexity(m, args.input_size).flops for n, m in models.items()}
        padded = {n: padded_macs(m, args.input_size) for n, m in models.items()}
        return {"flops": counts, "flops_ratio": _ratios(counts),
                "flops_counter": f"min(thop, ptflops) at {args.input_size}x{args.input_size}",
                "simd8_flops_ratio": _ratios(padded)}
    image = torch.rand(1, 3, args.size, args.size)
    whole = {n: _thop_macs(m, ([image[0]],)) for n, m in models.items()}
    backbone = {n: _thop_macs(m.backbone, (image,)) for n, m in models.items()}
    return {"flops": whole, "flops_ratio": _ratios(whole),
            "flops_counter": f"thop, whole detector at {args.size}x{args.size}",
            "backbone_fpn_flops": backbone, "backbone_fpn_flops_ratio": _ratios(backbone)}


@torch.inference_mode()
def detection_breakdown(model: nn.Module, image: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of each part of a torchvision detector on one image: process-CPU time on the CPU, wall time
    (synchronised) on CUDA."""
    parts: dict[str, list[float]] = {k: [] for k in ("transform", "backbone", "fpn", "rpn", "roi_heads")}
    device = image.device
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def mark() -> float:
        sync(device)
        return clock()

    for _ in range(repeats + 1):
        marks = [mark()]
        images, _ = model.transform([image])
        marks.append(mark())
        body = model.backbone.body(images.tensors)
        marks.append(mark())
        features = model.backbone.fpn(body)
        marks.append(mark())
        proposals, _ = model.rpn(images, features)
        marks.append(mark())
        model.roi_heads(features, proposals, images.image_sizes)
        marks.append(mark())
        for k, name in enumerate(parts):
            parts[name].append(marks[k + 1] - marks[k])
    return {name: statistics.median(v[1:]) for name, v in parts.items()}  # the first call is a warm-up


def _bench_task(task: str, device: torch.device, args: argparse.Namespace,
                flops_cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Time one task's models on ``device``; FLOPs are counted once per task (``flops_cache``), not per thread count."""
    models = (classification_models(args.compress_rate) if task == "classification"
              else detection_models(args.compress_rate, args.size, args.proposals, args.fpn_rate))
    if task not in flops_cache:
        flops_cache[task] = _flops(task, models, args)
    result: dict[str, Any] = {"task": task, "device": str(device), "mode": args.mode, **flops_cache[task]}
    cuda = device.type == "cuda"
    size = args.input_size if task == "classification" else args.size
    models = {name: deploy(task, m, args.mode, device, size) for name, m in models.items()}
    fmt = torch.contiguous_format if args.mode == "eager" else torch.channels_last
    big = args.batch_size if task == "classification" else args.det_batch_size
    repeats = args.repeats if task == "classification" else args.det_repeats
    result["batches"] = {}
    for batch in sorted({1, big}):
        if task == "classification":
            x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        else:
            x = [torch.rand(3, size, size, device=device) for _ in range(batch)]

        def call(model: nn.Module, x: Any = x) -> Any:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and args.amp):
                return model(x)

        times = time_interleaved({n: (lambda m=m: call(m)) for n, m in models.items()}, device, args.warmup, repeats)
        wall = {n: statistics.median(t["wall"]) for n, t in times.items()}
        cpu = {n: statistics.median(t["cpu"]) for n, t in times.items()}
        paired = {n: spread([b / m for b, m in zip(times["unpruned"]["wall"], t["wall"])])
                  for n, t in times.items() if n != "unpruned"}
        result["batches"][batch] = {
            "median_wall_s": wall, "median_cpu_s": cpu, "times_s": times,
            "images_per_s": {n: batch / s for n, s in wall.items()},
            "speedup": _ratios(wall), "speedup_cpu_time": _ratios(cpu),
            "speedup_paired_iqr": {n: [p.q1, p.q3] for n, p in paired.items()},
        }
    if task == "detection":
        image = torch.rand(3, size, size, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and args.amp):
            result["breakdown_s"] = {n: detection_breakdown(m, image, max(1, repeats // 2)) for n, m in models.items()}
    return result


def _report(result: dict[str, Any]) -> str:
    lines = [f"[{result['task']} on {result['device']}, {result['threads']} threads, mode {result['mode']}]"]
    ratio = result.get("flops_ratio", {})
    if "flops" in result:
        counts = ", ".join(f"{n} {v / 1e9:.2f} G" for n, v in result["flops"].items())
        lines.append(f"  FLOPs ({result['flops_counter']}): {counts}; ratio "
                     + ", ".join(f"{n} {r:.2f}x" for n, r in ratio.items()))
        if "simd8_flops_ratio" in result:
            lines.append("  FLOPs ratio with channels padded to the SIMD block of 8: "
                         + ", ".join(f"{n} {r:.2f}x" for n, r in result["simd8_flops_ratio"].items()))
        if "backbone_fpn_flops" in result:
            lines.append("  FLOPs ratio (thop, backbone+FPN only): "
                         + ", ".join(f"{n} {r:.2f}x" for n, r in result["backbone_fpn_flops_ratio"].items()))
    for batch, r in result["batches"].items():
        ips = ", ".join(f"{n} {v:.2f}" for n, v in r["images_per_s"].items())
        lines.append(f"  batch {batch:>3}: images/s {ips} (medians of {len(r['times_s']['unpruned']['wall'])})")
        for name, spd in r["speedup"].items():
            spd_cpu = r["speedup_cpu_time"][name]
            of = ((f" = {spd / ratio[name]:.3f} of FLOPs ratio", f" = {spd_cpu / ratio[name]:.3f}") if ratio
                  else ("", ""))
            q1, q3 = r["speedup_paired_iqr"][name]
            lines.append(f"      {name:>10}: speed-up wall {spd:.2f}x{of[0]} (paired rounds {q1:.2f}-{q3:.2f}x); "
                         f"CPU time {spd_cpu:.2f}x{of[1]}")
    if "breakdown_s" in result:
        clock = "wall" if result["device"].startswith("cuda") else "CPU"
        for name, parts in result["breakdown_s"].items():
            text = ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
            lines.append(f"  {clock} s per image, {name:>10}: {text} (total {sum(parts.values()):.3f})")
        base, pruned = result["breakdown_s"]["unpruned"], result["breakdown_s"]["pruned"]
        heads = sum(v for k, v in pruned.items() if k != "backbone")
        lines.append(f"  the backbone-pruned detector spends {heads / sum(pruned.values()):.0%} outside the backbone; "
                     f"with a free backbone its speed-up could reach {sum(base.values()) / heads:.2f}x")
    return "\n".join(lines)


def _chart(results: list[dict[str, Any]], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(results), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, result in zip(axes, results):
        batches = list(result["batches"])
        names = list(result["batches"][batches[0]]["images_per_s"])
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            bars = ax.bar([x + width * k for x in range(len(batches))],
                          [result["batches"][b]["images_per_s"][name] for b in batches], width, label=name)
            if name != "unpruned":
                ax.bar_label(bars, [f"{result['batches'][b]['speedup'][name]:.2f}x" for b in batches], fontsize=7)
        ax.set_ylim(top=1.3 * max(max(result["batches"][b]["images_per_s"].values()) for b in batches))
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(batches))], [f"batch {b}" for b in batches])
        where = result["device"] + (f", {result['threads']} threads" if result["device"] == "cpu" else "")
        title = f"{result['task']} ({where})"
        if "flops_ratio" in result:
            title += "\nFLOPs " + ", ".join(f"{r:.2f}x" for r in result["flops_ratio"].values())
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("images / s")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark every task on every device; prints a report and returns everything measured."""
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    header = {"compress_rate": args.compress_rate, "torch": torch.__version__,
              "default_threads": torch.get_num_threads(), "mode": args.mode,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "load_avg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "amp": args.amp}
    print(f"torch {header['torch']}, default threads {header['default_threads']}, {header['cpu_count']} CPUs, "
          f"load average {header['load_avg_before']}, CUDA: {header['cuda']}, rate {args.compress_rate}")
    results, flops_cache = [], {}
    for device_name in devices:
        device = torch.device(device_name)
        thread_counts = args.threads or sorted({1, header["default_threads"]})
        for threads in thread_counts if device.type == "cpu" else [None]:
            if threads:
                torch.set_num_threads(threads)
            for task in args.tasks:
                result = {"threads": torch.get_num_threads(), **_bench_task(task, device, args, flops_cache)}
                print(_report(result), flush=True)
                results.append(result)
    torch.set_num_threads(header["default_threads"])
    header["load_avg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average after: {header['load_avg_after']}")
    out = {**header, "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    if args.png:
        _chart(results, args.png)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    run(get_args_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
