"""Prune a trained network with CORING: rank filters, build the slim model, transfer the kept weights.

Library: ``prune_model(model, arch, compress_rate, criterion, strategy)`` and ``prune(...)`` (which also
returns the kept channels). Command line::
    python main/prune.py --arch resnet_56 --compress_rate "[0.]+[0.18]*29" --dry_run [--json]
    python main/prune.py --arch resnet_56 --compress_rate "[0.]+[0.18]*29" --pretrain_dir base.pth.tar \
        --criterion Euclide_dis --strategy min_sum --shot 5 --dataset cifar10 --data_dir data/cifar10 --job_dir J
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from coring.cli import Parser, nonnegative_int, positive_float, target_fraction
from coring.planning import format_plan
from coring.prune_run import make_engine, run_prune
from coring.pruning import PruneResult, prune, prune_model, shot_rates  # noqa: F401  (public interface)
from coring.threads import configure_threads
from main import cli
from main.cli import run_reporting_errors

__all__ = ["PruneResult", "prune", "prune_model", "shot_rates", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split("\n")[0])
    cli.add_model_args(parser, require_arch=False)
    cli.add_rank_args(parser)
    cli.add_data_args(parser)
    cli.add_device_args(parser)
    cli.add_output_args(parser, job_dir="pruned_model/prune")
    group = parser.add_argument_group("Pruning")
    group.add_argument("--pretrain_dir", "--pretrained", "--model_path", dest="pretrain_dir", default=None,
                       help="checkpoint of the trained network to prune")
    group.add_argument("--dry_run", action="store_true", help="print the plan (widths, params, FLOPs) and exit")
    group.add_argument("--json", action="store_true", help="with --dry_run: print one JSON object")
    group.add_argument("--bn_recalib", type=nonnegative_int, default=512,
                       help="training images used to re-estimate BatchNorm statistics for the adaptive-BN accuracy")
    group.add_argument("--calib_epochs", type=nonnegative_int, default=100,
                       help="K-shot: calibration epochs in all, ceil(calib/K) after each shot (0 when K == 1)")
    group.add_argument("--calib_lr", type=positive_float, default=0.01, help="K-shot: calibration learning rate")
    group.add_argument("--calib_weight_decay", type=cli.nonnegative_float, default=5e-3, help="K-shot: calibration weight decay")
    group.add_argument("--rank_cache", action=argparse.BooleanOptionalAction, default=True,
                       help="save ranks beside the checkpoint (<ckpt>.ranks.pt) and reuse them")
    group.add_argument("--rank_seed", type=int, default=0, help="seed of the 'random' criterion")
    group.add_argument("--skip_baseline_eval", action="store_true", help="do not evaluate the unpruned network")
    # Generic models (torchvision / user modules) through Torch-Pruning.
    group.add_argument("--model", default=None,
                       help=f"prune {cli.USER_MODEL_HELP} (instead of --arch)")
    group.add_argument("--flops_target", type=target_fraction, default=None,
                       help="fraction of FLOPs to remove (e.g. 0.5), instead of --compress_rate: with --model the "
                            "channel fraction of every group, with --arch the uniform rate, found by search")
    group.add_argument("--params_target", type=target_fraction, default=None,
                       help="fraction of parameters to remove, instead of --compress_rate (as --flops_target)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    return run_reporting_errors(_dispatch, parser, args)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Validate every argument (``make_engine``), then plan (``--dry_run``: nothing read or written) or prune."""
    engine = make_engine(args)
    if args.dry_run:
        plan = engine.plan()
        print(json.dumps(plan) if args.json else format_plan(plan))
        return 0
    if args.pretrain_dir is None and args.model is None:
        parser.error("--pretrain_dir (the trained checkpoint to prune) is required; use --dry_run to only plan")
    run_prune(args, engine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
