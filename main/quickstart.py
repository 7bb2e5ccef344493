"""Quick start on the embedded ``digits`` data: train a baseline, prune it with CORING, fine-tune, test.

    python main/quickstart.py                      # about 4 minutes on 2 idle CPU cores

Prints one table (params, FLOPs, top-1 before pruning, right after pruning (as transferred and after
BatchNorm re-estimation), after fine-tuning, CPU latency and throughput) and writes it to
``<job_dir>/quickstart.md``. Every step is the same code the command-line tools run.

Latency is measured by ``coring.latency.compare_latency``: baseline and pruned interleaved, many repeats, medians
with their interquartile range, the speed-up as the median of paired per-round ratios, under the CPU thread count
that runs the baseline fastest (printed). The cosine schedules warm up for ``epochs // 10`` epochs, so the short
runs here do not spend whole epochs near lr 0 (``coring.schedule``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

from coring.checkpoint import load_checkpoint, load_weights
from coring.cli import Parser, positive_int, threads
from coring.device import resolve_device
from coring.latency import LatencyComparison, compare_latency
from coring.prune_run import run_prune
from coring.threads import configure_threads
from main import cli
from main import prune as prune_entry
from main import test as test_entry
from main.finetune import make_args, run_finetune
from models import build_model, list_models
from models.registry import check_compress_rate

__all__ = ["run_quickstart", "main"]


#: The 10-class, 32x32 sets the quick start runs on without a download.
QUICKSTART_DATASETS = ("digits", "fashion_mnist", "synthetic_cifar")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet_56", choices=list_models())
    parser.add_argument("--dataset", default="digits", choices=QUICKSTART_DATASETS,
                        help="'digits' ships with scikit-learn; 'fashion_mnist' needs Debian's dataset-fashion-mnist")
    parser.add_argument("--compress_rate", type=cli.compress_rate_text, default="[0.]+[0.15]*2+[0.4]*27",
                        help="the paper's CORING-V-5 ResNet-56 row (-47%% FLOPs)")
    parser.add_argument("--criterion", type=cli.criterion_name, default="VBD_dis")
    parser.add_argument("--strategy", type=cli.strategy_name, default="min_sum")
    parser.add_argument("--baseline_epochs", type=positive_int, default=12)
    parser.add_argument("--finetune_epochs", type=positive_int, default=6)
    parser.add_argument("--batch_size", type=positive_int, default=32)
    parser.add_argument("--limit_train", type=positive_int, default=None, help="train on fewer images (smoke tests)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--latency_repeats", type=int, default=60,
                        help="interleaved timed calls per model at batch 1 (batch 64: a sixth, at least 3)")
    parser.add_argument("--job_dir", default="pruned_model/quickstart")
    parser.add_argument("--threads", type=threads, default="auto",
                        help="CPU threads for training ('auto': the idle cores); latency picks its own fastest count")
    return parser


def _train(job_dir: Path, epochs: int, lr: float, args: argparse.Namespace, **extra) -> dict:
    run_args = make_args(dataset=args.dataset, epochs=epochs, lr=lr, lr_type="cos", warmup_epochs=epochs // 10,
                         weight_decay=5e-4, batch_size=args.batch_size, job_dir=str(job_dir), device=args.device,
                         limit_train=args.limit_train, initial_eval=False, restart=True, **extra)
    return run_finetune(run_args)


def validate(args: argparse.Namespace) -> None:
    """Check what the parser cannot before the first epoch: the rate against the arch and the device."""
    check_compress_rate(args.arch, args.compress_rate)
    resolve_device(args.device)


def run_quickstart(args: argparse.Namespace) -> dict:
    validate(args)
    job = Path(args.job_dir)
    print(f"[1/4] training the {args.arch} baseline on {args.dataset} for {args.baseline_epochs} epochs")
    _train(job / "baseline", args.baseline_epochs, 0.05, args, arch=args.arch)
    baseline_ckpt = job / "baseline" / "model_best.pth.tar"

    print(f"[2/4] pruning with CORING ({args.criterion}, {args.strategy}) to {args.compress_rate}")
    prune_argv = ["--arch", args.arch, "--compress_rate", args.compress_rate, "--pretrain_dir", str(baseline_ckpt),
                  "--criterion", args.criterion, "--strategy", args.strategy, "--dataset", args.dataset,
                  "--job_dir", str(job / "pruned"), "--device", args.device, "--batch_size", str(args.batch_size),
                  "--bn_recalib", "512", "--no-rank_cache", "--restart"]
    pruned = run_prune(prune_entry.build_parser().parse_args(prune_argv))

    print(f"[3/4] fine-tuning the slim model for {args.finetune_epochs} epochs")
    _train(job / "finetune", args.finetune_epochs, 0.02, args, pretrained=str(job / "pruned" / "pruned.pth.tar"))

    print("[4/4] testing both models")
    results, models = {}, {}
    for name, ckpt in (("baseline", baseline_ckpt), ("pruned", job / "finetune" / "model_best.pth.tar")):
        test_args = test_entry.build_parser().parse_args(
            ["--dataset", args.dataset, "--model_path", str(ckpt), "--job_dir", str(job), "--device", args.device,
             "--no_progress"])
        results[name] = test_entry.run_test(test_args)
        checkpoint = load_checkpoint(ckpt)
        models[name] = build_model(args.arch, checkpoint.get("compress_rate"), 10)
        load_weights(models[name], checkpoint)
    timing = {"latency": compare_latency(models, 32, batch_size=1, repeats=args.latency_repeats),
              "throughput": compare_latency(models, 32, batch_size=64, repeats=max(3, args.latency_repeats // 6))}

    table = _table(results, pruned, timing, args.arch, args.dataset)
    print("\n" + table)
    (job / "quickstart.md").write_text(table + "\n")
    timings = {kind: t.as_dict() for kind, t in timing.items()}
    (job / "quickstart.json").write_text(json.dumps({"results": results, "prune": pruned, "timing": timings},
                                                    indent=2, default=str))
    return {"results": results, "prune": pruned, "timing": timings, "table": table}


def _after_pruning_note(arch: str) -> str:
    """Why the accuracy right after pruning is low (so nobody takes it for a bug)."""
    note = ("Right after pruning the accuracy is low by design, not a bug: every BatchNorm still holds the running "
            "statistics of the wide network, but its convolution now sums over fewer input channels, so the "
            "distribution of its outputs has moved and those statistics are stale")
    if arch in ("resnet_56", "resnet_110"):
        note += ("; and ResNet's parameter-free option-A shortcuts add the kept channels of a block's input to its "
                 "output by position (pad/crop), so in the first block of each stage they meet channels other than "
                 "the ones they were trained with")
    return note + (". Re-estimating the BatchNorm statistics on 512 training images recovers part of it; "
                   "fine-tuning recovers the rest.")


def _timing_rows(timing: dict[str, LatencyComparison]) -> list[tuple[str, str, str]]:
    lat, thr = timing["latency"], timing["throughput"]
    return [
        (f"CPU latency, batch 1 ({lat.threads} thread{'s' if lat.threads != 1 else ''})",
         lat.wall["baseline"].text(1e3, unit=" ms"),
         f"{lat.wall['pruned'].text(1e3, unit=' ms')}; speed-up {lat.speedup['pruned'].text(unit='x')}"),
        (f"CPU throughput, batch 64 ({thr.threads} thread{'s' if thr.threads != 1 else ''})",
         f"{thr.images_per_s('baseline'):.0f} img/s",
         f"{thr.images_per_s('pruned'):.0f} img/s; speed-up {thr.speedup['pruned'].text(unit='x')}"),
    ]


def _table(results: dict, pruned: dict, timing: dict[str, LatencyComparison], arch: str, dataset: str) -> str:
    base, slim = results["baseline"], results["pruned"]
    rows = [
        ("Params", f"{base['params'] / 1e6:.3f} M",
         f"{slim['params'] / 1e6:.3f} M (-{100 * (1 - slim['params'] / base['params']):.1f}%)"),
        ("FLOPs (MACs)", f"{base['flops'] / 1e6:.2f} M",
         f"{slim['flops'] / 1e6:.2f} M (-{100 * (1 - slim['flops'] / base['flops']):.1f}%)"),
        ("Top-1 before pruning", f"{base['top1']:.2f}", ""),
        ("Top-1 right after pruning (see below)", "", f"{pruned['top1_pruned']:.2f}"),
        ("  after BN re-estimation", "", f"{pruned['top1_pruned_bn']:.2f}"),
        ("Top-1 after fine-tuning", "", f"{slim['top1']:.2f}"),
        *_timing_rows(timing),
    ]
    lat = timing["latency"]
    lines = ["| | baseline | CORING-pruned |", "|---|---|---|"]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    lines += ["", f"({dataset} test split, {slim['count']} images; FLOPs = min(thop, ptflops) at 32x32.)", "",
              _after_pruning_note(arch), "",
              f"Timing: medians of {lat.repeats} (batch 1) and {timing['throughput'].repeats} (batch 64) calls with "
              "the two models interleaved, interquartile range in brackets; the speed-up is the median of the "
              "per-round ratios. The thread count is the one that ran the baseline fastest here"
              + (f" (load average {lat.load_avg[0]:.1f} on {os.cpu_count()} cores)." if lat.load_avg else ".")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_threads(args.threads)
    return cli.run_reporting_errors(run_quickstart, args)


if __name__ == "__main__":
    raise SystemExit(main())
