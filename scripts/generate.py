"""Write ``scripts/<arch>/<row>.sh`` for every CORING row of ``main/paper_tables.py``.

    python scripts/generate.py           # (re)write the row scripts
    python scripts/generate.py --check   # exit 1 if a committed script differs from what would be written

The row (criterion, K, compress rate, expected params/FLOPs, notes) comes from ``coring.paper_tables.CORING_ROWS``;
the training recipe of each row (epochs, schedule, weight decay, batch) and the paper script it comes from are
below (docs/reproduce.md). Shared shell code lives in ``scripts/lib/common.sh``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from coring.cli import Parser

REPO = Path(__file__).resolve().parent.parent

from coring.paper_tables import BASELINES, CORING_ROWS, PaperRow  # noqa: E402
from coring.report import TABLE_TITLES  # noqa: E402

__all__ = ["Recipe", "RECIPES", "PAPER_SCRIPTS", "render_row", "expected_files", "main"]


@dataclass(frozen=True)
class Recipe:
    """Fine-tuning (and K-shot calibration) settings of one row; batch is global (split over the processes)."""

    dataset: str
    recipe: str
    epochs: int
    lr: float
    lr_type: str
    momentum: float
    weight_decay: float
    batch: int
    label_smooth: float = 0.0
    warmup_epochs: int = 5
    lr_decay_step: str | None = None
    calib_epochs: int = 100      # K-shot calibration epochs in all (ceil(calib/K) per shot; none when K == 1)
    prune_batch: int = 256       # pruning runs in one process: calibration and evaluation batch
    workers: int | None = None   # ImageNet data-loading processes per GPU (the paper's 8)


# The clean snapshot's main/cifar10.py (= HEAD's main_lr.py) with the 400 epochs of its level scripts:
# SGD lr 0.01, momentum 0.9, weight decay 5e-3, batch 256, cosine per epoch with 5 warm-up epochs.
CIFAR = Recipe("cifar10", "cifar", epochs=400, lr=0.01, lr_type="cos", momentum=0.9, weight_decay=5e-3, batch=256)
# The clean snapshot's main/imagenet.py (= HEAD's evaluate.py): SGD lr 0.01, momentum 0.99, weight decay 1e-4,
# batch 512, 200 epochs, cosine with 5 warm-up epochs, label smoothing 0.1 on the train loss.
IMAGENET = Recipe("imagenet", "imagenet", epochs=200, lr=0.01, lr_type="cos", momentum=0.99, weight_decay=1e-4,
                  batch=512, label_smooth=0.1, calib_epochs=10, workers=8)

RECIPES: dict[str, Recipe] = {
    "vgg_16_bn": CIFAR,
    "resnet_56": CIFAR,
    "densenet_40": CIFAR,
    "googlenet": CIFAR,
    "mobilenet_v2": replace(CIFAR, weight_decay=1e-3),  # the clean level scripts pass --weight_decay 1e-3
    "resnet_50": IMAGENET,
}

_BROKEN = "as written it omits --compress_rate before the rate, so argparse rejects it"

# (arch, row script) -> where the row's recipe comes from in the paper's code (docs/reproduce.md).
PAPER_SCRIPTS: dict[tuple[str, str], str] = {
    ("vgg_16_bn", "c5"): "the clean snapshot's VGG soft.sh (main/cifar10.py; it ranks with Euclide_dis, K=5)",
    ("vgg_16_bn", "c15"): "none prunes this rate K-shot. HEAD's VGG cosine|euc|vbd.sh prune it one-shot with "
                          "main.py (300 epochs, step 150/225, wd 6e-3); we use the cifar10.py recipe of the other "
                          "VGG rows with the table's K=15",
    ("vgg_16_bn", "c10"): f"the clean snapshot's VGG hard.sh (main/cifar10.py; Euclide_dis, K=15; {_BROKEN})",
    ("resnet_56", "e5"): "the clean snapshot's ResNet-56 soft.sh (main/cifar10.py). HEAD's euc.sh prunes the same "
                         "rate with main_kshot.py, 300 epochs, step 150/225",
    ("resnet_56", "v5"): "the clean snapshot's ResNet-56 moderate.sh (main/cifar10.py)",
    ("resnet_56", "e"): "the clean snapshot's ResNet-56 hard.sh (main/cifar10.py)",
    ("densenet_40", "c_soft"): "the clean snapshot's DenseNet-40 soft.sh (main/cifar10.py). HEAD's round-9 "
                               "cosine|euc|vbd.sh run this rate with main_lr.py and weight decay 2e-3",
    ("densenet_40", "e"): "the clean snapshot's DenseNet-40 moderate.sh (main/cifar10.py). HEAD's round-9 "
                          "cosine|euc|vbd.sh run this rate with main_lr.py and weight decay 2e-3",
    ("densenet_40", "c_hard"): f"the clean snapshot's DenseNet-40 hard.sh (main/cifar10.py; {_BROKEN}). HEAD's "
                               "round-9 cosine.sh runs this rate with main_lr.py and weight decay 2e-3",
    ("googlenet", "v"): f"the clean snapshot's GoogLeNet soft.sh (main/cifar10.py; {_BROKEN}); HEAD's "
                        "3criteria.sh runs the same recipe (main_lr.py, K=1, 400 epochs, wd 5e-3)",
    ("googlenet", "e_moderate"): f"the clean snapshot's GoogLeNet moderate.sh (main/cifar10.py; {_BROKEN}); HEAD's "
                                 "3criteria.sh runs the same recipe (main_lr.py, K=1, 400 epochs, wd 5e-3)",
    ("googlenet", "e_hard"): f"the clean snapshot's GoogLeNet hard.sh (main/cifar10.py; {_BROKEN}); HEAD's "
                             "3criteria.sh runs the same recipe (main_lr.py, K=1, 400 epochs, wd 5e-3)",
    ("mobilenet_v2", "v_moderate"): "the clean snapshot's MobileNetV2 moderate.sh (main/cifar10.py, wd 1e-3)",
    ("mobilenet_v2", "v_hard"): "the clean snapshot's MobileNetV2 hard.sh (main/cifar10.py, wd 1e-3)",
    ("resnet_50", "v_soft"): "the clean snapshot's ResNet-50 soft.sh (main/imagenet.py). HEAD's evaluate.py "
                             "scripts use 180-200 epochs and batch 256 or 512",
    ("resnet_50", "c_moderate"): "the clean snapshot's ResNet-50 moderate.sh (main/imagenet.py)",
    ("resnet_50", "v_hard"): "the clean snapshot's ResNet-50 hard.sh (main/imagenet.py)",
    ("resnet_50", "v_extreme"): "the clean snapshot's ResNet-50 extreme.sh (main/imagenet.py)",
}

HEADER = "# Generated by scripts/generate.py from coring/paper_tables.py: edit those and re-run it, not this file."


def _num(value: float) -> str:
    """A float as flag text: 0.01, 0.1, 0.99; below 0.01 in scientific notation (5e-3, 1e-4)."""
    if value == 0 or value >= 0.01:
        return f"{value:g}"
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _wrap(text: str, prefix: str = "# ", width: int = 116) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(prefix) + len(line) + 1 + len(word) > width:
            lines.append(prefix + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(prefix + line)
    return lines


def _size(millions: float) -> str:
    return f"{millions / 1000:.2f}B" if millions >= 1000 else f"{millions:.2f}M"


def render_row(row: PaperRow) -> str:
    """The text of ``scripts/<arch>/<row>.sh``."""
    recipe = RECIPES[row.arch]
    base = BASELINES[row.arch]
    number, title = TABLE_TITLES[row.arch].split(". ", 1)
    drop_p = 100 * (1 - row.params_m / base.params_m)
    drop_f = 100 * (1 - row.flops_m / base.flops_m)
    top5 = f", top-5 {row.top5:.2f} %" if row.top5 is not None else ""
    lines = [
        "#!/usr/bin/env bash",
        f"# {row.label} on {title} (the paper's table {number}): top-1 {row.top1:.2f} %{top5},",
        f"# {_size(row.params_m)} params (-{drop_p:.1f} %), {_size(row.flops_m)} FLOPs (-{drop_f:.1f} %) "
        f"[our '{row.counter}' counter lands closest].",
        HEADER,
        "#",
        *_wrap(f"Paper's script: {PAPER_SCRIPTS[(row.arch, row.script)]}."),
    ]
    if row.note:
        lines += _wrap(f"Note: {row.note}.")
    data_hint = "data/imagenet" if recipe.dataset == "imagenet" else "data/cifar10"
    lines += [
        "#",
        f"# Usage: DATA_DIR={data_hint} PRETRAIN=runs/baseline/{row.arch}/model_best.pth.tar [JOB_DIR=...] "
        "[GPUS=N] \\",
        f"#            bash scripts/{row.arch}/{row.script}.sh",
        "#        DRY_RUN=1 bash ...: a handful of iterations on the embedded data (no data set or PRETRAIN needed).",
        "# CRITERION, SHOT and COMPRESS_RATE may be overridden (scripts/ablation.sh does); the defaults are the row's.",
        "# The other variables are described in scripts/lib/common.sh; the job layout in docs/reproduce.md.",
        "set -euo pipefail",
        'source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"',
        f"coring_setup {row.arch} {row.script} {recipe.dataset}",
        "",
        f'CRITERION="${{CRITERION:-{row.criterion}}}"',
        f'SHOT="${{SHOT:-{row.shot}}}"',
        f'COMPRESS_RATE="${{COMPRESS_RATE:-{row.compress_rate}}}"',
        f'BATCH="$(coring_batch {recipe.batch})"',
        "",
    ]
    if recipe.dataset == "imagenet":
        lines += ["# Ranks: cached beside PRETRAIN, or precomputed by scripts/generate_rank_resnet50.sh (RANK_DIR).",
                  "# One shot, so no calibration; pruning runs in one process (the first GPU)."]
    else:
        lines += [f"# K-shot: K rounds at rates r/K, r/(K-1), ..., r; ceil({recipe.calib_epochs}/K) calibration "
                  "epochs after each", "# (none when K = 1). Pruning runs in one process (the first GPU)."]
    workers = f" --workers {recipe.workers}" if recipe.workers else ""
    lines += [
        'coring_prune --compress_rate "$COMPRESS_RATE" --criterion "$CRITERION" --strategy min_sum --shot "$SHOT" \\',
        f"    --calib_epochs {recipe.calib_epochs} --calib_lr {_num(recipe.lr)} "
        f"--calib_weight_decay {_num(recipe.weight_decay)} --batch_size {recipe.prune_batch}{workers}",
        "",
        f"# Fine-tuning: {recipe.epochs} epochs, SGD lr {_num(recipe.lr)} momentum {_num(recipe.momentum)} "
        f"weight decay {_num(recipe.weight_decay)}, global batch {recipe.batch},",
    ]
    schedule = (f"cosine with {recipe.warmup_epochs} warm-up epochs" if recipe.lr_type == "cos"
                else f"x0.1 at epochs {recipe.lr_decay_step}")
    smooth = f", label smoothing {_num(recipe.label_smooth)}" if recipe.label_smooth else ""
    lines += [
        f"# {schedule}{smooth}; torchrun when GPUS > 1.",
        f"coring_finetune --recipe {recipe.recipe} --epochs {recipe.epochs} --lr {_num(recipe.lr)} "
        f"--lr_type {recipe.lr_type} \\",
    ]
    sched_flags = (f"--warmup_epochs {recipe.warmup_epochs}" if recipe.lr_type == "cos"
                   else f"--lr_decay_step {recipe.lr_decay_step}")
    lines += [
        f"    {sched_flags} --momentum {_num(recipe.momentum)} --weight_decay {_num(recipe.weight_decay)} "
        f"--label_smooth {_num(recipe.label_smooth)} \\",
        f'    --batch_size "$BATCH"{workers}',
        "",
    ]
    return "\n".join(lines)


def expected_files() -> dict[Path, str]:
    """Every generated script (path under the repository) and its text."""
    return {Path("scripts") / row.arch / f"{row.script}.sh": render_row(row) for row in CORING_ROWS}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a script differs")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in expected_files().items():
        path = REPO / rel
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755)
    if args.check:
        for rel in stale:
            print(f"{rel} differs from what scripts/generate.py writes", file=sys.stderr)
        return 1 if stale else 0
    print(f"wrote {len(stale)} of {len(expected_files())} scripts" if stale else "scripts up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
