"""Fine-tune a (pruned) network with the paper's recipes; resumable, torchrun-ready.

    python main/finetune.py --arch resnet_56 --compress_rate "[0.]+[0.18]*29" \\
        --pretrained pruned_model/resnet_56/pruned.pth.tar --dataset cifar10 --data_dir data/cifar10 \\
        --job_dir runs/resnet_56_ft
    torchrun --nproc_per_node=4 main/finetune.py ...        # DDP; --batch_size is per process
    python main/finetune.py ... --resume                     # continue from <job_dir>/checkpoint.pth.tar

Recipes (docs/design.md, "Training"; every value stays a flag, flags given on the command line win):

- ``cifar`` (default): SGD lr 0.01, momentum 0.9, weight decay 5e-3, batch 256, 300 epochs, step schedule x0.1 at
  epochs 150 and 225, plain cross-entropy.
- ``imagenet`` (default for ``--dataset imagenet`` / ``synthetic_imagenet``): SGD lr 0.01, momentum 0.99, weight
  decay 1e-4, batch 256, 200 epochs, cosine schedule with 5 warm-up epochs, label smoothing 0.1 on the train loss.

Weight decay applies to every parameter (BN and biases included), as in the paper. Validation uses plain
cross-entropy. Per epoch: train, evaluate, log loss/top-1/top-5/lr/time, append ``metrics.csv``, write
``checkpoint.pth.tar`` atomically (after the CSV row, so a resumed run drops rows past the checkpoint) and copy it
to ``model_best.pth.tar`` on a new best top-1. The end logs ``Final top-1`` and ``Best top-1 ... (epoch e)``
and writes ``summary.json`` and ``curves.png``.

Under torchrun each process trains on its shard (``--batch_size`` per process, so the global batch is
``batch_size * world_size``; the paper's 256 was global over DataParallel GPUs, so pass ``--batch_size 256/N`` to
match it on N GPUs), metrics are all-reduced, rank 0 alone logs and writes files. Each epoch reseeds the
RNGs from ``(seed, epoch, rank)`` and the loaders order data by ``(seed, epoch)``, so a resumed run replays the
interrupted epoch exactly as an uninterrupted run would.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from coring.checkpoint import load_checkpoint, load_weights
from coring.cli import Parser
from coring.distributed import DistInfo, barrier, cleanup, init_distributed, wrap_ddp
from coring.engine import NonFiniteLossError, evaluate, prepare_model
from coring.fit import BEST_NAME, CHECKPOINT_NAME, FitConfig, fit, seed_epoch
from coring.jobdir import RUN_MARKERS, claim_job_dir
from coring.rebuild import model_from_checkpoint
from coring.run_logging import RunLogger, write_json
from coring.threads import configure_threads, describe_threads
from data import build_loaders
from main.cli import (
    add_data_args,
    add_device_args,
    add_model_args,
    add_optim_args,
    add_output_args,
    run_reporting_errors,
)
from models import num_outputs

__all__ = ["RECIPES", "build_parser", "parse_args", "make_args", "run_finetune", "main", "CHECKPOINT_NAME",
           "BEST_NAME"]

IMAGENET_DATASETS = ("imagenet", "synthetic_imagenet")

RECIPES: dict[str, dict[str, Any]] = {
    "cifar": dict(lr=0.01, momentum=0.9, weight_decay=5e-3, batch_size=256, epochs=300, lr_type="step",
                  lr_decay_step="150,225", warmup_epochs=5, label_smooth=0.0),
    "imagenet": dict(lr=0.01, momentum=0.99, weight_decay=1e-4, batch_size=256, epochs=200, lr_type="cos",
                     lr_decay_step="150,225", warmup_epochs=5, label_smooth=0.1),
}


# ---------------------------------------------------------------------------------------------- arguments
def _recipes_text() -> str:
    """The recipes as help text: the defaults shown below are the 'cifar' recipe's."""
    lines = ["Recipes (--recipe; the defaults shown above are the 'cifar' recipe's, 'imagenet' is the default for "
             "the ImageNet data sets; flags given on the command line win):"]
    for name, r in RECIPES.items():
        schedule = (f"step x0.1 at {r['lr_decay_step']}" if r["lr_type"] == "step"
                    else f"{r['lr_type']} with {r['warmup_epochs']} warm-up epochs")
        lines.append(f"{name}: lr {r['lr']}, momentum {r['momentum']}, weight decay {r['weight_decay']}, batch "
                     f"{r['batch_size']}, {r['epochs']} epochs, {schedule}, label smoothing {r['label_smooth']}.")
    return " ".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The fine-tuning parser: the shared groups of ``main.cli`` plus the fine-tuning options."""
    parser = Parser(description="Fine-tune a pruned network (the paper's CIFAR and ImageNet recipes).",
                    epilog=_recipes_text())
    add_model_args(parser, require_arch=False, user_model=True)
    add_data_args(parser)
    add_device_args(parser)
    add_optim_args(parser)
    add_output_args(parser)
    group = parser.add_argument_group("Fine-tuning")
    group.add_argument("--pretrained", "--pretrain_dir", "--model_path", dest="pretrained", default=None,
                       help="checkpoint to start from (a pruned checkpoint, the paper's dict or a bare state dict)")
    group.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                       help="default hyper-parameters: 'imagenet' for the ImageNet data sets, else 'cifar'")
    group.add_argument("--print_freq", "--log_every", dest="print_freq", type=int, default=None,
                       help="log every N iterations (default: 12800/batch_size on CIFAR, an epoch/10 on ImageNet)")
    group.add_argument("--evaluate", "--test_only", dest="evaluate", action="store_true",
                       help="only evaluate the weights on the test set and exit")
    group.add_argument("--initial_eval", action=argparse.BooleanOptionalAction, default=True,
                       help="evaluate the starting weights before fine-tuning (not on --resume)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="tqdm progress bars (only on a terminal, rank 0)")
    return parser


def _recipe_for(recipe: str | None, dataset: str | None) -> str:
    if recipe is not None:
        return recipe
    return "imagenet" if dataset in IMAGENET_DATASETS else "cifar"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; the recipe's values become the defaults, explicit flags win."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    recipe = _recipe_for(pre.recipe, pre.dataset)
    parser.set_defaults(**RECIPES[recipe])
    args = parser.parse_args(argv)
    args.recipe = recipe
    if args.use_onecycle:
        args.lr_type = "onecycle"
    return args


def make_args(**overrides: Any) -> argparse.Namespace:
    """Arguments for in-process calls: the CLI defaults (recipe of ``dataset``/``recipe``) with ``overrides``.

    >>> args = make_args(arch="resnet_56", dataset="digits", epochs=3, job_dir="runs/x")
    """
    argv: list[str] = []
    for key in ("dataset", "recipe"):
        if overrides.get(key) is not None:
            argv += [f"--{key}", str(overrides[key])]
    args = parse_args(argv)
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise ValueError(f"make_args: unknown option {key!r}")
        setattr(args, key, value)
    if getattr(args, "use_onecycle", False):
        args.lr_type = "onecycle"
    return args


# ---------------------------------------------------------------------------------------------- helpers
def _args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as plain values (loadable with ``weights_only=True``)."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return out


def fit_config(args: argparse.Namespace) -> FitConfig:
    """The ``FitConfig`` the command line describes."""
    return FitConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                     lr_type=args.lr_type, lr_decay_step=args.lr_decay_step, warmup_epochs=args.warmup_epochs,
                     label_smooth=args.label_smooth, amp=bool(args.amp), channels_last=bool(args.channels_last),
                     seed=args.seed, progress=args.progress, resume=args.resume, log_every=args.print_freq,
                     initial_eval=args.initial_eval)


def _build_model(args: argparse.Namespace, source: Any, num_classes: int) -> nn.Module:
    meta = source if isinstance(source, dict) else {}
    if args.arch is None and meta.get("arch") is None and args.model is None:
        raise ValueError("no architecture: pass --arch (the checkpoint does not record one)")
    classes = args.num_classes or meta.get("num_classes") or num_classes
    model = model_from_checkpoint(meta, args.arch, args.compress_rate, classes, args.model)
    if source is not None:
        load_weights(model, source)
    return model


# ---------------------------------------------------------------------------------------------- the run
def run_finetune(args: argparse.Namespace, model: nn.Module | None = None) -> dict[str, Any]:
    """Fine-tune as the command line describes and return the summary (also written to ``summary.json``).

    ``model``: an in-memory network to fine-tune instead of building one from ``--pretrained`` (the quick start
    passes the slim model it just built); its ``arch`` attribute is recorded when present. The job directory is
    locked for the run and a finished run in it is refused unless ``--resume`` or ``--restart``
    (``coring.jobdir``). Raises ``NonFiniteLossError`` when training diverges (the last checkpoint is left intact).
    """
    preexisting_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist_info = init_distributed(args.device)
    job_dir = Path(args.job_dir)
    markers = () if args.evaluate else RUN_MARKERS
    claim = claim_job_dir(job_dir, resume=args.resume, restart=args.restart, markers=markers) \
        if dist_info.is_main else contextlib.nullcontext(job_dir)
    try:
        with claim:
            barrier()
            with RunLogger(job_dir, "evaluate" if args.evaluate else "finetune", is_main=dist_info.is_main) as log:
                try:
                    return _run(args, model, dist_info, job_dir, log)
                except NonFiniteLossError as exc:
                    log.error("error: %s", exc)
                    raise
    finally:
        if dist_info.distributed and not preexisting_group:
            cleanup()


def _run(args: argparse.Namespace, model: nn.Module | None, dist_info: DistInfo, job_dir: Path,
         log: RunLogger) -> dict[str, Any]:
    started = time.time()
    device = dist_info.device
    log.info("args = %s", args)
    log.write_config(args)
    if args.gpu is not None:
        log.info("note: --gpu %s is ignored; select GPUs with CUDA_VISIBLE_DEVICES or torchrun", args.gpu)
    log.info("device %s, world size %d, recipe %s, %s", device, dist_info.world_size, args.recipe,
             describe_threads())
    seed_epoch(args.seed, 0, 0)  # identical model init on every rank

    ckpt_path = job_dir / CHECKPOINT_NAME
    resume_state = None
    if args.resume and not args.evaluate and ckpt_path.exists():
        resume_state = load_checkpoint(ckpt_path)
    loaders = build_loaders(args.dataset, args.data_dir, args.batch_size, device=device,
                            eval_batch_size=args.eval_batch_size, workers=args.workers, seed=args.seed,
                            rank=dist_info.rank, world_size=dist_info.world_size, train_augment=True,
                            limit_train=args.limit_train, limit_test=args.limit_test)

    source = resume_state if resume_state is not None else (
        load_checkpoint(args.pretrained) if args.pretrained else None)
    meta = source if isinstance(source, dict) else {}
    if model is None:
        if source is None:
            log.warning("no --pretrained checkpoint: training %s from random initialisation", args.arch)
        model = _build_model(args, source, loaders.info.num_classes)
    elif source is not None:
        load_weights(model, source)
    arch = args.arch or meta.get("arch") or getattr(model, "arch", None)
    compress_rate = args.compress_rate if args.compress_rate is not None else meta.get("compress_rate")
    if isinstance(compress_rate, (list, tuple)):
        compress_rate = [float(r) for r in compress_rate]
    num_classes = num_outputs(model)
    if num_classes is not None and num_classes != loaders.info.num_classes:
        raise ValueError(f"the model has {num_classes} outputs but {args.dataset} has {loaders.info.num_classes} "
                         "classes; pass --num_classes or a matching checkpoint")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("arch %s, compress_rate %s, %d parameters, %d classes", arch, compress_rate, n_params,
             loaders.info.num_classes)
    summary: dict[str, Any] = {"arch": arch, "compress_rate": compress_rate, "dataset": args.dataset,
                               "params": n_params, "world_size": dist_info.world_size, "job_dir": str(job_dir)}

    if args.evaluate:
        model = prepare_model(model, device, channels_last=args.channels_last)
        result = evaluate(wrap_ddp(model, dist_info), loaders.test, device, amp=bool(args.amp),
                          progress=args.progress)
        log.info(" * Acc@1 %.3f Acc@5 %.3f Loss %.4f (%d images)", result.top1, result.top5, result.loss,
                 result.count)
        summary.update(test_top1=result.top1, test_top5=result.top5, test_loss=result.loss, test_count=result.count)
        if dist_info.is_main:
            write_json(summary, job_dir / "summary.json")
        return summary

    record = {"args": _args_record(args), "arch": arch, "compress_rate": compress_rate,
              "num_classes": loaders.info.num_classes, "dataset": args.dataset,
              **({"generic": meta["generic"]} if "generic" in meta else {})}
    result = fit(model, loaders, fit_config(args), job_dir, dist_info=dist_info, log=log, record=record,
                 resume_state=resume_state)
    del resume_state
    final, last_epoch = result.final, (result.history[-1]["epoch"] if result.history else None)
    if result.initial is not None:
        summary.update(initial_top1=result.initial.top1, initial_top5=result.initial.top5)
    if final is not None:
        log.info("Final top-1 %.3f top-5 %.3f (epoch %d)", final.top1, final.top5, last_epoch)
    if result.best_epoch is not None:
        log.info("Best top-1 %.3f (epoch %d); best top-5 %.3f", result.best_top1, result.best_epoch,
                 result.best_top5)
    summary.update(epochs=args.epochs, final_epoch=last_epoch, final_top1=final.top1 if final else None,
                   final_top5=final.top5 if final else None, test_count=final.count if final else None,
                   best_top1=result.best_top1, best_top5=result.best_top5, best_epoch=result.best_epoch,
                   checkpoint=str(ckpt_path), model_best=str(job_dir / BEST_NAME),
                   train_time_s=result.train_time_s, wall_time_s=time.time() - started)
    if dist_info.is_main:
        write_json(summary, job_dir / "summary.json")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads(args.threads)
    try:
        return run_reporting_errors(run_finetune, args)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
