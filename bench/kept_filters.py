"""Which filters does each criterion keep? Norms, near-dead filters and overlaps, on a trained network.

    python bench/kept_filters.py --arch resnet_56 --compress_rate "[0.]+[0.4]*2+[0.5]*9+[0.6]*9+[0.7]*9" \\
        --checkpoint runs/study/baseline_seed0.pth.tar --criteria VBD_dis,Euclide_dis,cosine_sim,l1,random,fpgm

For every pruned channel group: the share of the group's total filter L1 norm that the kept filters hold (a
filter of a group scored on several convs counts the sum of its convs' norms), the share of near-dead filters
(L1 norm below ``--dead`` times the group's median) among the kept ones, and the overlap (Jaccard index) of the
kept set with ``l1``'s, and how far the kept filters lie from the rest of their group (mean distance between
unit-norm filters, relative to the group's average: above 1 = the criterion keeps outliers). Printed as a table (mean over groups, and per stage-output group), written as JSON with
``--json``. No training: it reads one checkpoint and ranks it once per criterion.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from coring.checkpoint import load_checkpoint, load_weights
from coring.cli import Parser
from coring.pruning import prune
from models import build_model, channel_layout


def group_norms(model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """Per channel group, each output channel's filter L1 norm summed over the group's scored convs."""
    layout = channel_layout(model, arch)
    modules = dict(model.named_modules())
    return {g.name: sum(modules[c].weight.detach().abs().flatten(1).sum(1) for c in g.scored)
            for g in layout.groups}


def group_outlyingness(model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """Per channel group, each filter's mean Euclidean distance to the group's other filters (filters scaled to unit
    norm, summed over the scored convs): high = an outlier of the group, low = a typical filter."""
    layout = channel_layout(model, arch)
    modules = dict(model.named_modules())
    out = {}
    for g in layout.groups:
        total = 0
        for conv in g.scored:
            w = modules[conv].weight.detach().flatten(1).double()
            w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
            total = total + torch.cdist(w, w).sum(1) / max(1, w.shape[0] - 1)
        out[g.name] = total
    return out


def kept_statistics(norms: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                    dead: float, outlyingness: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
    """Per pruned group: norm share kept, near-dead share among kept, Jaccard overlap with ``reference`` and (with
    ``outlyingness``) the kept filters' mean outlyingness relative to the whole group's (1 = typical sample)."""
    out: dict[str, dict[str, float]] = {}
    for name, kept in keep.items():
        norm = norms[name]
        if len(kept) == len(norm):
            continue
        weak = norm < dead * norm.median()
        ref = set(reference[name].tolist())
        mine = set(kept.tolist())
        out[name] = {"norm_kept": float(norm[kept].sum() / norm.sum()),
                     "dead_kept": float(weak[kept].float().mean()),
                     "dead_in_group": float(weak.float().mean()),
                     "jaccard_l1": len(mine & ref) / len(mine | ref)}
        if outlyingness is not None:
            out[name]["outlying_kept"] = float(outlyingness[name][kept].mean() / outlyingness[name].mean())
    return out


def summarise(arch: str, rate: str, checkpoint: str | None, criteria: Sequence[str], dead: float,
              strategy: str = "min_sum") -> dict[str, dict]:
    """Statistics of every criterion's kept filters on one network."""
    model = build_model(arch)
    if checkpoint:
        load_weights(model, load_checkpoint(checkpoint))
    model.eval()
    norms, outlying = group_norms(model, arch), group_outlyingness(model, arch)
    reference = prune(model, arch, rate, "l1", strategy).keep
    result = {}
    for criterion in criteria:
        keep = prune(model, arch, rate, criterion, strategy).keep
        groups = kept_statistics(norms, keep, reference, dead, outlying)
        result[criterion] = {
            "groups": groups,
            "mean": {key: statistics.fmean(g[key] for g in groups.values()) for key in next(iter(groups.values()))},
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet_56")
    parser.add_argument("--compress_rate", default="[0.]+[0.4]*2+[0.5]*9+[0.6]*9+[0.7]*9")
    parser.add_argument("--checkpoint", default=None, help="trained weights (default: random initialisation)")
    parser.add_argument("--criteria", default="VBD_dis,Euclide_dis,cosine_sim,l1,random,fpgm")
    parser.add_argument("--strategy", default="min_sum")
    parser.add_argument("--dead", type=float, default=0.25, help="near-dead: L1 norm below this times the median")
    parser.add_argument("--json", default=None, help="also write every group's statistics here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = summarise(args.arch, args.compress_rate, args.checkpoint, args.criteria.split(","), args.dead,
                       args.strategy)
    print(f"{args.arch} {args.compress_rate} ({args.checkpoint or 'random init'}), strategy {args.strategy}, "
          f"near-dead = L1 < {args.dead} x group median; means over pruned groups")
    print(f"{'criterion':<14}{'norm kept':>10}{'dead kept':>10}{'jaccard l1':>11}{'outlying':>10}   "
          "stage outputs: norm kept")
    for criterion, stats in result.items():
        stages = ", ".join(f"{name} {g['norm_kept']:.2f}" for name, g in stats["groups"].items() if "out" in name)
        mean = stats["mean"]
        print(f"{criterion:<14}{mean['norm_kept']:>10.3f}{mean['dead_kept']:>10.3f}{mean['jaccard_l1']:>11.3f}"
              f"{mean['outlying_kept']:>10.3f}   {stages}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
