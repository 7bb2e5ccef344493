"""The python half of ``bench/gpu_check.sh``: ranking on the GPU against the CPU, and a short AMP + channels_last
fine-tune on ``digits`` against a bare training loop. Both run on any device, so the CPU side is testable.

    python bench/gpu_check.py ranking  --device cuda --json out.json     # same kept filters on GPU and CPU?
    python bench/gpu_check.py finetune --device cuda --json out.json     # images/s, fine-tune loop vs bare loop

``ranking`` prunes a seeded ResNet-56 (and VGG-16-BN) with every main criterion through ``coring.pruning.prune``
once with the weights on the CPU and once on ``--device``, and compares the kept channels of every channel group.
``finetune`` trains ResNet-56 on ``digits`` (``data.build_loaders``, the on-device loader on CUDA) with
``coring.engine.train_one_epoch`` (AMP, channels_last on CUDA, the schedule, the NaN guard, metrics) and with a
bare loop (zero_grad, forward under the same autocast, backward, step) over the same batches, alternating epochs;
it reports the images/s of each, the ratio, and the top-1 reached.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coring.device import resolve_device
from coring.engine import autocast, evaluate, make_grad_scaler, prepare_model, train_one_epoch
from coring.latency import sync
from coring.pruning import prune
from coring.run_logging import RunLogger
from coring.schedule import build_schedule
from data import build_loaders
from models import build_model

__all__ = ["check_ranking", "finetune_vs_bare", "summarize", "main", "RANK_CASES", "CRITERIA"]

#: (arch, compress rate) pairs ranked on both devices: residual stages (coupled groups) and a plain chain.
RANK_CASES = (("resnet_56", "[0.]+[0.18]*29"), ("vgg_16_bn", "[0.21]*7+[0.75]*5"))
CRITERIA = ("VBD_dis", "Euclide_dis", "cosine_sim", "l1")


def check_ranking(device: torch.device | str, cases: Sequence[tuple[str, str]] = RANK_CASES,
                  criteria: Sequence[str] = CRITERIA) -> dict[str, Any]:
    """Kept channels of every group when ranking on ``device`` against ranking on the CPU (seeded weights)."""
    device = resolve_device(str(device))
    results = []
    for arch, rate in cases:
        torch.manual_seed(0)
        model = build_model(arch).eval()
        for criterion in criteria:
            start = time.perf_counter()
            on_cpu = prune(model, arch, rate, criterion).keep
            cpu_s = time.perf_counter() - start
            moved = copy.deepcopy(model).to(device)
            sync(device)
            start = time.perf_counter()
            on_device = prune(moved, arch, rate, criterion).keep
            sync(device)
            device_s = time.perf_counter() - start
            differ = [name for name in on_cpu
                      if not torch.equal(on_cpu[name].cpu(), on_device[name].cpu())]
            results.append({"arch": arch, "compress_rate": rate, "criterion": criterion, "groups": len(on_cpu),
                            "groups_differing": differ, "cpu_s": cpu_s, "device_s": device_s})
    return {"device": str(device), "cases": results,
            "identical": all(not r["groups_differing"] for r in results)}


def _bare_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, device: torch.device,
                amp: bool) -> int:
    """One plain pass: zero_grad, forward under autocast, backward (scaled when fp16), step. Returns images."""
    scaler = make_grad_scaler(device, amp)
    loss_fn = nn.CrossEntropyLoss()
    count = 0
    model.train()
    for images, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = loss_fn(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        count += labels.shape[0]
    return count


def finetune_vs_bare(device: torch.device | str, epochs: int = 3, batch_size: int = 128, *, amp: bool = True,
                     arch: str = "resnet_56", lr: float = 0.05, limit_train: int | None = None) -> dict[str, Any]:
    """Images/s of the fine-tuning loop and of a bare loop on ``digits``, alternating epochs after one warm-up
    epoch each (medians over ``epochs``); the fine-tuned model's test top-1 at the end."""
    device = resolve_device(str(device))
    loaders = build_loaders("digits", None, batch_size, device=device, workers=0, limit_train=limit_train)
    torch.manual_seed(0)
    base = build_model(arch, None, loaders.info.num_classes)
    ft_model = prepare_model(copy.deepcopy(base), device, channels_last=True)
    bare_model = prepare_model(copy.deepcopy(base), device, channels_last=True)

    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

    ft_opt, bare_opt = sgd(ft_model), sgd(bare_model)
    schedule = build_schedule(ft_opt, "cos", lr, epochs + 1, len(loaders.train), warmup_epochs=0)
    scaler = make_grad_scaler(device, amp)
    loss_fn = nn.CrossEntropyLoss()
    rates: dict[str, list[float]] = {"finetune": [], "bare": []}
    with tempfile.TemporaryDirectory() as job_dir, RunLogger(job_dir, "gpu_check", console=False):
        for epoch in range(epochs + 1):  # epoch 0 warms both up (allocator, cudnn autotuning) and is not counted
            order = ("finetune", "bare") if epoch % 2 == 0 else ("bare", "finetune")
            for kind in order:
                sync(device)
                start = time.perf_counter()
                if kind == "finetune":
                    count = train_one_epoch(ft_model, loaders.train, ft_opt, schedule, loss_fn, device, amp=amp,
                                            scaler=scaler, epoch=epoch, progress=False, log_every=0).count
                else:
                    count = _bare_epoch(bare_model, loaders.train, bare_opt, device, amp)
                sync(device)
                if epoch > 0:
                    rates[kind].append(count / (time.perf_counter() - start))
        top1 = evaluate(ft_model, loaders.test, device, amp=amp, progress=False).top1
    ft, bare = statistics.median(rates["finetune"]), statistics.median(rates["bare"])
    return {"device": str(device), "arch": arch, "batch_size": batch_size, "epochs": epochs, "amp": amp,
            "channels_last": device.type == "cuda", "finetune_images_per_s": ft, "bare_images_per_s": bare,
            "ratio": ft / bare, "rounds": rates, "test_top1": top1}


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarize(results: str | Path) -> str:
    """``gpu_summary.md`` from what ``gpu_check.sh`` left in ``results``: every step's status and time, then the
    numbers of each check that produced them."""
    results = Path(results)
    lines = ["# GPU check", "", "| step | exit | seconds | command |", "|---|---|---|---|"]
    try:
        steps = [line.split("\t", 3) for line in (results / "gpu_steps.tsv").read_text().splitlines() if line]
    except OSError:
        steps = []
    for name, rc, seconds, command in steps:
        status = "ok" if rc == "0" else ("TIMED OUT" if rc == "124" else f"FAILED ({rc})")
        lines.append(f"| {name} | {status} | {seconds} | `{command}` |")
    tests = results / "cuda_tests.log"
    if tests.exists():
        tail = [line for line in tests.read_text().splitlines() if line.strip()][-6:]
        lines += ["", "## CUDA tests", "", "```", *tail, "```"]
    ranking = _load(results / "ranking.json")
    if ranking:
        lines += ["", f"## Ranking on {ranking['device']} against the CPU: "
                  f"{'identical kept filters' if ranking['identical'] else 'DIFFERENT kept filters'}", "",
                  "| arch | criterion | groups | groups differing | CPU s | GPU s |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['arch']} | {c['criterion']} | {c['groups']} | {', '.join(c['groups_differing']) or '0'} | "
                  f"{c['cpu_s']:.2f} | {c['device_s']:.2f} |" for c in ranking["cases"]]
    finetune = _load(results / "finetune.json")
    if finetune:
        lines += ["", f"## Fine-tune on digits ({finetune['arch']}, batch {finetune['batch_size']}, AMP "
                  f"{finetune['amp']}, channels_last {finetune['channels_last']}, {finetune['device']})", "",
                  f"fine-tuning loop {finetune['finetune_images_per_s']:.0f} images/s, bare loop "
                  f"{finetune['bare_images_per_s']:.0f} images/s: {finetune['ratio']:.3f}x of the bare loop "
                  f"(medians of {finetune['epochs']} alternating epochs); test top-1 {finetune['test_top1']:.2f}"]
    for task in ("classification", "detection"):
        bench = _load(results / f"throughput_{task}.json")
        if not bench:
            continue
        lines += ["", f"## Throughput, {task} ({bench.get('cuda')}, AMP {bench.get('amp')})", "",
                  "| batch | images/s | speed-up |", "|---|---|---|"]
        for result in bench["results"]:
            for batch, r in result["batches"].items():
                ips = ", ".join(f"{n} {v:.1f}" for n, v in r["images_per_s"].items())
                spd = ", ".join(f"{n} {v:.2f}x" for n, v in r["speedup"].items())
                lines.append(f"| {batch} | {ips} | {spd} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=["ranking", "finetune", "summary"])
    parser.add_argument("--results", default="bench/results/gpu", help="summary: the folder gpu_check.sh wrote")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3, help="finetune: timed epochs per loop")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--limit_train", type=int, default=None, help="finetune: fewer training images")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.check == "summary":
        path = Path(args.results) / "gpu_summary.md"
        path.write_text(summarize(args.results))
        print(f"wrote {path}")
        return 0
    try:
        device = resolve_device(args.device)
        result = check_ranking(device) if args.check == "ranking" else finetune_vs_bare(
            device, args.epochs, args.batch_size, limit_train=args.limit_train)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0 if result.get("identical", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
