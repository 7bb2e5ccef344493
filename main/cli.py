"""Shared argument groups: every entry point builds its one parser from these.

Flag names and defaults follow the paper's command lines (docs/reproduce.md), so its
commands run unchanged; aliases keep the older spellings working.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from coring.checkpoint import CheckpointError
from coring.cli import (
    Parser,
    argument_type,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    threads,
)
from coring.rank import canonical_criterion, canonical_strategy
from data import DATASETS, DataNotFoundError
from models import list_models
from models.compress import parse_compress_rate

__all__ = [
    "add_model_args", "add_data_args", "add_device_args", "add_rank_args", "add_optim_args",
    "add_output_args", "run_reporting_errors", "Parser", "REPO_ROOT", "USER_MODEL_HELP", "compress_rate_text",
    "criterion_name", "strategy_name", "nonnegative_float",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


#: ``--model`` help: a file spec is Python code that runs.
USER_MODEL_HELP = ("any CNN: 'torchvision:NAME' or 'path/to/file.py:ClassName'. A file spec IMPORTS, and so EXECUTES, "
                   "that file: name only files you trust")


def add_model_args(parser: argparse.ArgumentParser, *, require_arch: bool = True,
                   user_model: bool = False) -> argparse._ArgumentGroup:
    """``--arch``, ``--compress_rate``, ``--num_classes``; with ``user_model`` also ``--model`` (to load a checkpoint
    pruned from a user module, which never imports a file the checkpoint names)."""
    group = parser.add_argument_group("Model")
    group.add_argument("--arch", required=require_arch, choices=list_models(), help="architecture")
    group.add_argument("--compress_rate", "-cpr", type=compress_rate_text, default=None,
                       help="removal fraction per layer in the paper's grammar, e.g. '[0.21]*7+[0.75]*5' "
                            "(default: unpruned, or the rate recorded in the checkpoint)")
    group.add_argument("--num_classes", type=positive_int, default=None,
                       help="classifier outputs (default: the dataset's)")
    if user_model:
        group.add_argument("--model", default=None,
                           help=f"{USER_MODEL_HELP}. Needed to load a checkpoint pruned from a user module (the "
                                "class must be the recorded one; the file may have moved): a checkpoint never "
                                "imports the file it names. torchvision checkpoints rebuild without it")
    return group


#: ``--compress_rate``: a string in the paper's grammar (checked here, kept as given).
compress_rate_text = argument_type(parse_compress_rate, returns_text=True)
#: ``--criterion``: a name ``coring.rank.canonical_criterion`` knows (kept as given).
criterion_name = argument_type(canonical_criterion, returns_text=True)
#: ``--strategy``: a name ``coring.rank.canonical_strategy`` knows (kept as given).
strategy_name = argument_type(canonical_strategy, returns_text=True)


def add_data_args(parser: argparse.ArgumentParser, *, default_dataset: str = "cifar10",
                  default_batch_size: int = 256) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("Dataset")
    group.add_argument("--dataset", default=default_dataset, choices=sorted(DATASETS), help="dataset name")
    group.add_argument("--data_dir", default=None, help="dataset directory (not used by the embedded 'digits')")
    group.add_argument("--batch_size", "--train_batch_size", type=positive_int, default=default_batch_size,
                       help="batch size (per process under torchrun)")
    group.add_argument("--eval_batch_size", type=positive_int, default=None,
                       help="evaluation batch size (default: batch_size)")
    group.add_argument("--workers", type=nonnegative_int, default=4, help="data-loading workers (ImageNet only)")
    group.add_argument("--limit_train", type=positive_int, default=None, help="use only the first N training images")
    group.add_argument("--limit_test", type=positive_int, default=None, help="use only the first N test images")
    return group


def add_device_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("Device")
    group.add_argument("--device", default="auto", help="'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                       help="mixed precision on CUDA (ignored on CPU)")
    group.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels_last memory format on CUDA (ignored on CPU)")
    group.add_argument("--gpu", default=None,
                       help="accepted for the paper's command lines; use CUDA_VISIBLE_DEVICES or torchrun instead")
    group.add_argument("--seed", type=int, default=0, help="random seed")
    group.add_argument("--threads", type=threads, default="auto",
                       help="CPU threads for torch: a number, or 'auto' = the idle cores (CPU count minus the load "
                            "average) shared among torchrun's local processes; the log states what is used")
    return group


def add_rank_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("Ranking")
    group.add_argument("--criterion", type=criterion_name, default="VBD_dis",
                       help="cosine_sim | Euclide_dis | VBD_dis | Manhattan_dis | Pearson_sim | SNR_dis "
                            "(or cosine, euclidean, vbd, ...) | l1 | l2 | random | fpgm | hrank | chip | taylor "
                            "(docs/criteria.md)")
    group.add_argument("--strategy", type=strategy_name, default="min_sum", help="min_sum | min_min | sum")
    group.add_argument("--random_rank", action="store_true", help="the paper's random baseline (= --criterion random)")
    group.add_argument("--shot", type=positive_int, default=1,
                       help="K-shot pruning: K rounds at rates r/K, r/(K-1), ..., r")
    group.add_argument("--rank_batches", type=nonnegative_int, default=4,
                       help="hrank, chip, taylor: score on the first N batches of the training loader (epoch 0)")
    return group


def add_optim_args(parser: argparse.ArgumentParser, *, epochs: int = 300, lr: float = 0.01,
                   weight_decay: float = 5e-3, momentum: float = 0.9, lr_type: str = "step",
                   label_smooth: float = 0.0) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("Optimizer and schedule")
    group.add_argument("--epochs", type=nonnegative_int, default=epochs, help="fine-tuning epochs")
    group.add_argument("--lr", "--learning_rate", dest="lr", type=positive_float, default=lr, help="initial learning rate")
    group.add_argument("--momentum", type=nonnegative_float, default=momentum, help="SGD momentum")
    group.add_argument("--weight_decay", type=nonnegative_float, default=weight_decay, help="SGD weight decay")
    group.add_argument("--lr_type", default=lr_type, choices=["step", "cos", "onecycle"],
                       help="step: x0.1 at --lr_decay_step; cos: cosine with warm-up; onecycle")
    group.add_argument("--lr_decay_step", default="150,225", help="epochs at which the step schedule decays")
    group.add_argument("--warmup_epochs", type=nonnegative_int, default=5,
                       help="linear warm-up epochs of the cosine schedule")
    group.add_argument("--use_onecycle", action="store_true", help="alias of --lr_type onecycle")
    group.add_argument("--label_smooth", type=fraction, default=label_smooth,
                       help="label smoothing of the train loss, in [0, 1)")
    return group


def add_output_args(parser: argparse.ArgumentParser, *, job_dir: str = "pruned_model/run") -> argparse._ArgumentGroup:
    group = parser.add_argument_group("Output")
    group.add_argument("--job_dir", default=job_dir, help="where logs and checkpoints go")
    group.add_argument("--resume", action="store_true", help="continue the run in --job_dir where it stopped")
    group.add_argument("--restart", action="store_true",
                       help="start over in a --job_dir that holds a run, moving the old run into "
                            "<job_dir>/previous-<time>/ (nothing is deleted)")
    return group


def run_reporting_errors(body: Callable[..., Any], *args: Any) -> int:
    """Run an entry point's body; bad input (a missing file or directory, a checkpoint that does not fit, a
    malformed value) becomes one ``error: ...`` line on stderr and exit status 2. Returns the body's int status
    (0 when it returns anything else)."""

    try:
        status = body(*args)
    except (CheckpointError, DataNotFoundError, FileNotFoundError, ValueError) as error:  # CompressRateError too
        print(f"error: {error}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0
