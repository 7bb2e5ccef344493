"""Evaluate a checkpoint: top-1/top-5 on the test split, params and FLOPs by every counter.

The paper's command lines work unchanged, e.g.::
    python main/test.py --dataset cifar10 --data_dir data/cifar10 --arch resnet_56 \
        --compress_rate [0.]+[0.18]*29 --model_path ./pruned_model/cifar10/resnet56/soft/model_best.pth.tar

Checkpoints written by the paper's code load (wrapped or bare state dicts, ``module.`` prefixes, thop
buffers); a checkpoint that does not fit the architecture is a one-line error. The log goes to
``<job_dir>/logs/test_<arch>_<date>.log`` and the console (stderr with ``--json``, so that stdout holds the JSON
alone: ``| jq`` works); a job dir that cannot be written only warns, and the log goes to stderr. Only the test
split is read (CIFAR-10 needs only ``test_batch``). A checkpoint pruned from a user module needs
``--model path/to/file.py:ClassName`` (which executes that file): a checkpoint never imports a file it names.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Sequence

from coring.checkpoint import load_checkpoint, load_weights
from coring.cli import Parser
from coring.counting import count_complexity
from coring.device import resolve_device
from coring.engine import evaluate, prepare_model
from coring.rebuild import model_from_checkpoint
from coring.run_logging import DATE_FORMAT, LOG_FORMAT, RunLogger
from coring.threads import configure_threads
from data import build_loaders, dataset_info
from main import cli

__all__ = ["build_parser", "run_test", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description="Evaluate a (pruned) checkpoint")
    cli.add_model_args(parser, require_arch=False, user_model=True)
    cli.add_data_args(parser, default_batch_size=512)
    cli.add_device_args(parser)
    group = parser.add_argument_group("Test")
    group.add_argument("--model_path", "--pretrained", "--checkpoint", dest="model_path", required=True,
                       help="checkpoint to evaluate")
    group.add_argument("--job_dir", default="logs", help="the log goes to <job_dir>/logs/test_<arch>_<date>.log")
    group.add_argument("--json", action="store_true",
                       help="print one JSON object with the results on stdout (the log then goes to stderr)")
    group.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


@contextlib.contextmanager
def _open_log(job_dir: str, name: str, *, to_stderr: bool) -> Iterator[RunLogger]:
    """The run's log file plus a console handler (stderr when ``to_stderr``); an unwritable ``job_dir`` warns and
    leaves the console (then stderr) alone."""
    try:
        log = RunLogger(job_dir, name, console=False)
    except OSError as error:
        print(f"warning: cannot write a log in '{job_dir}' ({error.strerror or error}); logging to stderr only",
              file=sys.stderr)
        log, to_stderr = RunLogger(job_dir, name, is_main=False), True  # is_main=False writes no file
    handler = None
    if not any(getattr(h, "_coring_console", False) for h in log.logger.handlers):
        handler = logging.StreamHandler(sys.stderr if to_stderr else sys.stdout)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=DATE_FORMAT))
        log.logger.addHandler(handler)
    try:
        yield log
    finally:
        if handler is not None:
            log.logger.removeHandler(handler)
            handler.close()
        log.close()


def run_test(args: argparse.Namespace) -> dict:
    """Evaluate ``args.model_path``; returns the results that are printed."""

    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.model_path)
    info = dataset_info(args.dataset)
    num_classes = args.num_classes or checkpoint.get("num_classes") or info.num_classes
    model = model_from_checkpoint(checkpoint, args.arch, args.compress_rate, num_classes, args.model)
    load_weights(model, checkpoint)
    arch = getattr(model, "arch", args.arch)
    complexity = count_complexity(model, info.image_size)
    with _open_log(args.job_dir, f"test_{arch}", to_stderr=args.json) as log:
        log.info("args = %s", vars(args))
        log.info("arch %s, compress_rate %s, checkpoint %s", arch,
                 args.compress_rate or checkpoint.get("compress_rate"), args.model_path)
        loaders = build_loaders(args.dataset, args.data_dir, args.batch_size, device=device,
                                eval_batch_size=args.eval_batch_size or args.batch_size, workers=args.workers,
                                limit_test=args.limit_test, test_only=True)
        model = prepare_model(model, device, channels_last=args.channels_last)
        result = evaluate(model, loaders.test, device, amp=args.amp, progress=not args.no_progress, desc="test")
        log.info(" * Acc@1 %.3f Acc@5 %.3f (%d images, loss %.4f)", result.top1, result.top5, result.count,
                 result.loss)
        log.info("Params: %.2f  Flops: %.2f  (min of thop and ptflops, raw counts)", complexity.params,
                 complexity.flops)
        for counter in ("thop", "ptflops", "conv_linear"):
            params, flops = complexity.by_counter(counter)
            log.info("  %-12s params %.4fM  FLOPs %.4fM", counter, params / 1e6, flops / 1e6)
    summary = {"arch": arch, "top1": result.top1, "top5": result.top5, "loss": result.loss, "count": result.count,
               **complexity.as_dict()}
    if args.json:
        print(json.dumps(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_threads(args.threads)
    return cli.run_reporting_errors(run_test, args)


if __name__ == "__main__":
    raise SystemExit(main())
