"""Images/s of the fine-tuning loop against a bare PyTorch loop, in one run on one device.

    python bench/train_speed.py --arch resnet_56 --batch_size 128 --iters 20 --rounds 3

* fine-tuning loop: ``coring.engine.train_one_epoch`` over the on-device uint8 loader (``DeviceTensorLoader``:
  batched RandomCrop(32, 4) + flip + normalisation on the device), the per-iteration schedule, the NaN guard,
  train top-1/top-5 bookkeeping, a progress bar (on a terminal) and text logging every ``--log_every`` iterations
  into a temporary job dir.
* bare loop: the same model (an identical copy), SGD, batch and precision, on one pre-made float tensor batch:
  ``zero_grad; loss = cross_entropy(model(x), y); backward; step``. No logging, no augmentation, no metrics.

The two loops alternate for ``--rounds`` rounds (the order flips every round) after a warm-up, so a busy
machine slows both alike; the medians are compared, and so are the per-round ratios and the images per CPU-second
of this process (which other processes disturb less). On CUDA both use the same autocast dtype and channels_last.
Target on a 2-core CPU: fine-tuning loop >= 0.9x the bare loop.
"""
from __future__ import annotations

import argparse  # noqa: E402
import copy  # noqa: E402
import os
import platform  # noqa: E402
import statistics  # noqa: E402
import sys
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from coring.cli import Parser
from coring.device import resolve_device  # noqa: E402
from coring.engine import autocast, make_grad_scaler, prepare_model, train_one_epoch  # noqa: E402
from coring.run_logging import RunLogger  # noqa: E402
from coring.schedule import build_schedule  # noqa: E402
from data.device_loader import DeviceTensorLoader
from models import arch_spec, build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def bench(arch: str, compress_rate: str | None, batch_size: int, iters: int, device: torch.device, *,
          rounds: int = 3, warmup: int = 3, log_every: int = 10, amp: bool = True,
          channels_last: bool = True, lr: float = 0.01) -> dict:
    """Run both loops; return images/s per round and the medians."""

    size = arch_spec(arch).input_size
    torch.manual_seed(0)
    base = build_model(arch, compress_rate)
    classes = base.num_classes if hasattr(base, "num_classes") else arch_spec(arch).num_classes
    ft_model = prepare_model(copy.deepcopy(base), device, channels_last=channels_last)
    bare_model = prepare_model(copy.deepcopy(base), device, channels_last=channels_last)

    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-3)

    ft_opt, bare_opt = sgd(ft_model), sgd(bare_model)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (iters * batch_size, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (iters * batch_size,), generator=g)
    loader = DeviceTensorLoader(images, labels, batch_size, device=device, mean=(0.4914, 0.4822, 0.4465),
                                std=(0.2023, 0.1994, 0.2010), shuffle=True, augment=True)
    schedule = build_schedule(ft_opt, "step", lr, rounds + 1, len(loader))
    ft_scaler = make_grad_scaler(device, amp)
    bare_scaler = make_grad_scaler(device, amp)
    loss_fn = nn.CrossEntropyLoss()

    x = torch.randn(batch_size, 3, size, size, device=device)
    if device.type == "cuda" and channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch_size,), device=device)

    def bare_steps(n: int) -> None:
        for _ in range(n):
            bare_opt.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = nn.functional.cross_entropy(bare_model(x), y)
            bare_scaler.scale(loss).backward()
            bare_scaler.step(bare_opt)
            bare_scaler.update()

    ft_rates: list[float] = []
    bare_rates: list[float] = []
    ft_cpu: list[float] = []  # images per CPU-second of this process: less sensitive to other processes
    bare_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as job_dir, RunLogger(job_dir, "bench", console=False):
        # warm-up (allocator, cudnn.benchmark autotuning, oneDNN primitives)
        train_one_epoch(ft_model, loader, ft_opt, schedule, loss_fn, device, amp=amp, scaler=ft_scaler, epoch=0,
                        progress=False, log_every=0, max_iters=warmup)
        bare_steps(warmup)
        _sync(device)

        def run_ft(r: int) -> None:
            t0, c0 = time.perf_counter(), time.process_time()
            result = train_one_epoch(ft_model, loader, ft_opt, schedule, loss_fn, device, amp=amp,
                                     scaler=ft_scaler, epoch=r + 1, progress=True, log_every=log_every)
            _sync(device)
            ft_rates.append(result.count / (time.perf_counter() - t0))
            ft_cpu.append(result.count / max(time.process_time() - c0, 1e-9))

        def run_bare() -> None:
            t0, c0 = time.perf_counter(), time.process_time()
            bare_steps(iters)
            _sync(device)
            bare_rates.append(iters * batch_size / (time.perf_counter() - t0))
            bare_cpu.append(iters * batch_size / max(time.process_time() - c0, 1e-9))

        for r in range(rounds):
            if r % 2 == 0:
                run_ft(r)
                run_bare()
            else:
                run_bare()
                run_ft(r)
    ft, bare = statistics.median(ft_rates), statistics.median(bare_rates)
    return {"finetune_images_per_s": ft, "bare_images_per_s": bare, "ratio": ft / bare,
            "finetune_rounds": ft_rates, "bare_rounds": bare_rates,
            "paired_ratio": statistics.median(f / b for f, b in zip(ft_rates, bare_rates)),
            "cpu_time_ratio": statistics.median(ft_cpu) / statistics.median(bare_cpu)}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet_56")
    parser.add_argument("--compress_rate", default=None, help="default: unpruned")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per loop and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations of each loop first")
    parser.add_argument("--log_every", type=int, default=10, help="fine-tuning loop's log interval")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On a shared machine 1 thread is far less "
                             "sensitive to other processes than 2 (an OpenMP team stalls when one thread is preempted)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="autocast on CUDA")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.iters < 1 or args.rounds < 1 or args.batch_size < 1:
        parser.error("--iters, --rounds and --batch_size must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = bench(args.arch, args.compress_rate, args.batch_size, args.iters, device, rounds=args.rounds,
                   warmup=args.warmup, log_every=args.log_every, amp=args.amp, channels_last=args.channels_last)
    print(f"device       : {device} ({_device_name(device)}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(f"model        : {args.arch} rate={args.compress_rate}, batch {args.batch_size}, {args.iters} iters x "
          f"{args.rounds} rounds")
    print("finetune loop: %8.1f images/s  (rounds: %s)" % (
        result["finetune_images_per_s"], ", ".join(f"{v:.1f}" for v in result["finetune_rounds"])))
    print("bare loop    : %8.1f images/s  (rounds: %s)" % (
        result["bare_images_per_s"], ", ".join(f"{v:.1f}" for v in result["bare_rounds"])))
    print(f"ratio        : {result['ratio']:.3f}x of the bare loop (target >= 0.9); median of per-round ratios "
          f"{result['paired_ratio']:.3f}x; per CPU-second {result['cpu_time_ratio']:.3f}x")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average : {load:.2f} (other processes share the cores when this exceeds the thread count)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
