"""Estimate the GPU-hours of every row script from epochs x images x FLOPs (an estimate, not a measurement).

    python scripts/estimate_gpu_hours.py [--tmacs-cifar 5] [--tmacs-imagenet 30]

Per row: fine-tuning = epochs x (3 x train images + test images) x MACs of the pruned model (a training step costs
about three forward passes); K-shot calibration = for each shot s, ceil(calib/K) epochs x 3 x train images x MACs
of the shot's model. Ranking and the evaluations around pruning are minutes and left out. MACs are conv + linear
multiply-accumulates at the nominal input. The effective throughput is an assumption about one A100-class GPU with
mixed precision: 30 TMAC/s at 224x224 (ResNet-50 trains at about 2,500 images/s, i.e. 2,500 x 3 x 4.1 GMAC) and
5 TMAC/s at 32x32, where small feature maps use the GPU poorly (VGG-16 at about 10 s per CIFAR epoch). Thin CIFAR
networks (ResNet-56, MobileNetV2) are bound by kernel launches rather than FLOPs, so read theirs as a lower bound;
the first epoch's ``epoch_time_s`` in ``metrics.csv`` gives the real figure (``main/report.py`` sums it). ImageNet
epochs also have a floor set by JPEG decoding: ``--imagenet-images-per-s`` (default 2,500 per GPU, a node with
about 16 loader cores per GPU); the estimate is the larger of the two.
Prints a markdown table (docs/reproduce.md holds its output).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from coring.cli import Parser

REPO = Path(__file__).resolve().parent.parent

IMAGES = {"cifar10": (50_000, 10_000), "imagenet": (1_281_167, 50_000)}


def _load_generate():
    import importlib.util

    spec = importlib.util.spec_from_file_location("coring_scripts_generate", REPO / "scripts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def estimate(tmacs_cifar: float = 5.0, tmacs_imagenet: float = 30.0, imagenet_ips: float = 2500.0) -> list[dict]:
    from coring.counting import count_conv_linear
    from coring.paper_tables import CORING_ROWS
    from coring.pruning import shot_rates
    from models import arch_spec, build_model
    from models.compress import as_rate_list

    recipes = _load_generate().RECIPES
    out = []
    for row in CORING_ROWS:
        recipe, spec = recipes[row.arch], arch_spec(row.arch)
        train, test = IMAGES[recipe.dataset]
        rate = (tmacs_imagenet if recipe.dataset == "imagenet" else tmacs_cifar) * 1e12
        macs = count_conv_linear(build_model(row.arch, row.compress_rate).eval(), spec.input_size)[1]
        finetune = recipe.epochs * (3 * train + test) * macs / rate
        if recipe.dataset == "imagenet":
            finetune = max(finetune, recipe.epochs * (train + test) / imagenet_ips)
        calib = 0.0
        if row.shot > 1:
            per_shot = math.ceil(recipe.calib_epochs / row.shot)
            rates = as_rate_list(row.compress_rate, spec.num_rates, row.arch)
            for shot in shot_rates(rates, row.shot):
                shot_macs = count_conv_linear(build_model(row.arch, shot).eval(), spec.input_size)[1]
                calib += per_shot * 3 * train * shot_macs / rate
        out.append({"row": f"{row.arch}/{row.script}", "label": row.label, "epochs": recipe.epochs,
                    "calib_epochs": math.ceil(recipe.calib_epochs / row.shot) * row.shot if row.shot > 1 else 0,
                    "gmacs": macs / 1e9, "hours": (finetune + calib) / 3600})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--tmacs-cifar", type=float, default=5.0, help="effective TMAC/s at 32x32")
    parser.add_argument("--tmacs-imagenet", type=float, default=30.0, help="effective TMAC/s at 224x224")
    parser.add_argument("--imagenet-images-per-s", type=float, default=2500.0,
                        help="ImageNet images/s the data loader sustains per GPU")
    args = parser.parse_args(argv)
    rows = estimate(args.tmacs_cifar, args.tmacs_imagenet, args.imagenet_images_per_s)
    print("| Script | Row | Fine-tune epochs | Calibration epochs | GMACs/image | GPU-hours (est.) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `scripts/{r['row']}.sh` | {r['label']} | {r['epochs']} | {r['calib_epochs']} | {r['gmacs']:.3f} | "
              f"{r['hours']:.1f} |")
    print(f"\nTotal: {sum(r['hours'] for r in rows):.0f} GPU-hours (at {args.tmacs_cifar:g} TMAC/s for 32x32, "
          f"{args.tmacs_imagenet:g} TMAC/s for 224x224, at most {args.imagenet_images_per_s:g} ImageNet images/s).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
