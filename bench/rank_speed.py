"""Benchmark: time of the whole CORING ranking (summaries + matrix + strategy) per model.

For every prunable channel group of VGG-16-BN (13 convs), ResNet-56 (stem, 27 block conv1, stage-1 and stage-2
outputs = the stage's conv2s together; stage-3 outputs are never pruned) and ResNet-50 (stem, 16 conv1 and
16 conv2 mid groups, stage-1..3 outputs = all conv3 + downsample convs of the stage together; stage-4 outputs
are never pruned), it times the batched engine of ``coring.rank``:

- per group (one ``group_saliency`` call each), and
- the whole model in one ``rank_groups`` call (what the pruning code does; equal-width groups share one loop).

On the architectures named by ``--reference-archs`` (VGG-16-BN by default) it also times, in the same run, a
straightforward implementation that stands for the paper's code: per filter tensorly unfolding + SVD, a Python
double loop over all ordered pairs calling the metric once per pair and mode, and a greedy loop that rescans
the whole matrix each step. ``--quick`` times that pair loop on a random sample of pairs per layer and
extrapolates to all N^2 pairs (labelled "est."). The reference's kept sets are compared with the engine's.

Weights come from ``models.build_model(arch)`` when that works, else random weights of the same shapes.
Run: ``python bench/rank_speed.py [--archs vgg_16_bn,resnet_56,resnet_50] [--criterion VBD_dis]
[--strategy min_sum] [--device cpu] [--quick]``. This is a benchmark, not a test: it prints what it measures.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import tensorly as tl  # noqa: E402
import torch  # noqa: E402
from tensorly.base import unfold  # noqa: E402

from coring import rank  # noqa: E402
from coring.cli import Parser
from models import build_model

ARCHS = ("vgg_16_bn", "resnet_56", "resnet_50")
Groups = list[tuple[str, list[torch.Tensor]]]


# ----------------------------------------------------------------------------------------------------------------
# Conv shapes and groups
# ----------------------------------------------------------------------------------------------------------------


def conv_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Name -> weight shape of every conv that the ranking reads (the models' module names)."""
    shapes: dict[str, tuple[int, ...]] = {}
    if arch == "vgg_16_bn":
        cin = 3
        for i, width in enumerate([64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]):
            shapes[f"conv{i}"] = (width, cin, 3, 3)
            cin = width
    elif arch == "resnet_56":
        shapes["conv1"] = (16, 3, 3, 3)
        cin = 16
        for stage, planes in enumerate([16, 32, 64], start=1):
            for block in range(9):
                shapes[f"layer{stage}.{block}.conv1"] = (planes, cin, 3, 3)
                shapes[f"layer{stage}.{block}.conv2"] = (planes, planes, 3, 3)
                cin = planes
    elif arch == "resnet_50":
        shapes["conv1"] = (64, 3, 7, 7)
        cin = 64
        for stage, (planes, blocks) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3]), start=1):
            for block in range(blocks):
                prefix = f"layer{stage}.{block}"
                shapes[f"{prefix}.conv1"] = (planes, cin, 1, 1)
                shapes[f"{prefix}.conv2"] = (planes, planes, 3, 3)
                shapes[f"{prefix}.conv3"] = (planes * 4, planes, 1, 1)
                if block == 0:
                    shapes[f"{prefix}.downsample.0"] = (planes * 4, cin, 1, 1)
                cin = planes * 4
    else:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    return shapes


def load_convs(arch: str, seed: int) -> tuple[dict[str, torch.Tensor], str]:
    """Conv weights by name: from ``models.build_model(arch)`` if importable and matching, else random."""
    shapes = conv_shapes(arch)
    try:
        torch.manual_seed(seed)
        model = build_model(arch)
        found = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        named = {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
        if arch == "vgg_16_bn":  # module names differ between implementations: take the convs in order
            convs = dict(zip(shapes, found))
        else:
            convs = {name: named[name] for name in shapes if name in named}
        if len(convs) == len(shapes) and all(tuple(convs[n].shape) == s for n, s in shapes.items()):
            return convs, "models.build_model (its initialisation)"
        reason = "layer names/shapes differ"
    except Exception as exc:  # the models package may not exist yet
        reason = f"{type(exc).__name__}: {exc}"
    gen = torch.Generator().manual_seed(seed)
    convs = {n: torch.randn(s, generator=gen) * (2.0 / (s[1] * s[2] * s[3])) ** 0.5 for n, s in shapes.items()}
    return convs, f"random weights of the same shapes (build_model unavailable: {reason})"


def ranking_groups(arch: str, convs: dict[str, torch.Tensor]) -> Groups:
    """The channel groups that pruning ranks, each with the weights of its scored convs."""
    if arch == "vgg_16_bn":
        return [(name, [w]) for name, w in convs.items()]
    groups: Groups = [("stem", [convs["conv1"]])]
    if arch == "resnet_56":
        groups += [(n, [w]) for n, w in convs.items() if n.endswith(".conv1") and n.startswith("layer")]
        for stage in (1, 2):
            outs = [w for n, w in convs.items() if n.startswith(f"layer{stage}.") and n.endswith(".conv2")]
            groups.append((f"layer{stage}.out", outs))
        return groups
    for mid in ("conv1", "conv2"):
        groups += [(n, [w]) for n, w in convs.items() if n.startswith("layer") and n.endswith(f".{mid}")]
    for stage in (1, 2, 3):
        outs = [w for n, w in convs.items() if n.startswith(f"layer{stage}.") and
                (n.endswith(".conv3") or n.endswith("downsample.0"))]
        groups.append((f"layer{stage}.out", outs))
    return groups


# ----------------------------------------------------------------------------------------------------------------
# The straightforward implementation (stands for the paper's code)
# ----------------------------------------------------------------------------------------------------------------


def paper_metric(criterion: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One pair, one call, as the paper's ``similarity.py`` does it."""
    if criterion == "cosine_sim":
        return lambda a, b: torch.abs(torch.dot(a, b)) / (torch.norm(a) * torch.norm(b))
    if criterion == "Euclide_dis":
        return lambda a, b: torch.dist(a, b)
    if criterion == "VBD_dis":
        return lambda a, b: torch.var(a - b) / (torch.var(a) + torch.var(b))
    if criterion == "Manhattan_dis":
        return lambda a, b: torch.sum(torch.abs(a - b))
    if criterion == "Pearson_sim":
        return lambda a, b: torch.corrcoef(torch.stack([a, b]))[0, 1]
    if criterion == "SNR_dis":
        return lambda a, b: torch.var(a - b) / torch.var(a)
    raise ValueError(criterion)


def paper_decompose(weights: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Per filter, per conv and informative mode: tensorly unfolding + SVD, first left singular vector.

    The canonical sign of the toolkit is applied (cheap) so the kept sets can be compared with the engine's.
    """
    factors: list[list[torch.Tensor]] = [[] for _ in range(weights[0].shape[0])]
    with tl.backend_context("numpy"):
        for weight in weights:
            w = weight.detach().cpu().to(torch.float64)
            modes = [m for m, length in enumerate(w.shape[1:]) if length > 1]
            for i in range(w.shape[0]):
                filt = w[i].numpy()
                for m in modes:
                    u = torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(unfold(filt, m))), full_matrices=False)[0][:, 0]
                    k = int(torch.argmax(torch.abs(u)))
                    factors[i].append(-u if u[k] < 0 else u)
    return factors


def paper_matrix(factors: list[list[torch.Tensor]], criterion: str, pairs: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """Python double loop over ordered pairs (or the given sample of pairs), one metric call per pair and mode."""
    metric = paper_metric(criterion)
    n = len(factors)
    mat = torch.zeros(n, n, dtype=torch.float64)
    todo = pairs if pairs is not None else ((i, j) for i in range(n) for j in range(n))
    for i, j in todo:
        values = [metric(a, b) for a, b in zip(factors[i], factors[j])]
        mat[i, j] = sum(values) / len(values)
    return mat


def paper_greedy(mat: torch.Tensor, distance: bool, strategy: str) -> torch.Tensor:
    """Greedy loop that rescans the whole matrix every step (docs/design.md, "Greedy strategies"); ``sum`` is a row sum."""
    if strategy == "sum":
        return (1.0 if distance else -1.0) * mat.sum(dim=1)
    s = mat.clone()
    n = s.shape[0]
    inf = float("inf") if distance else -float("inf")
    s.fill_diagonal_(inf)
    saliency = torch.full((n,), n - 1, dtype=torch.float64)
    for step in range(n - 1):
        flat = int(torch.argmin(s)) if distance else int(torch.argmax(s))
        r, c = divmod(flat, n)
        s[r, c] = s[c, r] = inf
        row, col = s[r], s[:, c]
        if strategy == "min_min":
            keep_r = row.min() > col.min() if distance else row.max() < col.max()
        else:
            total_r, total_c = row[row != inf].sum(), col[col != inf].sum()
            keep_r = total_r > total_c if distance else total_r < total_c
        victim = c if bool(keep_r) else r
        saliency[victim] = step
        s[victim, :] = inf
        s[:, victim] = inf
    return saliency


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, object]:
    """Best wall-clock time of ``repeats`` runs, and the last result."""
    return timed_cpu(fn, device, repeats)[::2]


def timed_cpu(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, float, object]:
    """Best wall-clock time, the process CPU time (all threads) of that run, and the last result."""
    best, best_cpu, out = float("inf"), 0.0, None
    for _ in range(repeats):
        sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        sync(device)
        wall = time.perf_counter() - start
        if wall < best:
            best, best_cpu = wall, time.process_time() - cpu
    return best, best_cpu, out


def kept_sets_agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    n = a.shape[0]
    return all(
        torch.equal(rank.select_from_saliency(a.cpu(), k), rank.select_from_saliency(b.cpu(), k))
        for k in {max(1, n // 4), max(1, n // 2), max(1, 3 * n // 4)}
    )


def bench_arch(arch: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    convs, source = load_convs(arch, args.seed)
    groups = [(name, [w.to(device) for w in ws]) for name, ws in ranking_groups(arch, convs)]
    reference = arch in args.reference_archs
    print(f"\n=== {arch}: {len(groups)} groups, {sum(len(ws) for _, ws in groups)} convs; weights: {source}")
    print(f"criterion {args.criterion}, strategy {args.strategy}, device {device}")

    rank.rank_groups([ws for _, ws in groups[:2]], args.criterion, args.strategy)  # warm-up (library init)
    header = f"{'group':<18}{'N':>6}{'convs':>6}{'engine s':>11}"
    if reference:
        header += f"{'ref decomp':>12}{'ref pairs':>14}{'ref greedy':>12}{'ref total':>13}{'speed-up':>10}{'same kept':>11}"
    print(header)
    fast_total = ref_total = 0.0
    agree = 0
    distance = "dis" in rank.canonical_criterion(args.criterion)
    crit = rank.canonical_criterion(args.criterion)
    strat = rank.canonical_strategy(args.strategy)
    rng = random.Random(args.seed)
    for name, ws in groups:
        n = ws[0].shape[0]
        t_fast, sal = timed(lambda: rank.group_saliency(ws, crit, strat, name=name), device, args.repeats)
        fast_total += t_fast
        line = f"{name:<18}{n:>6}{len(ws):>6}{t_fast:>11.4f}"
        if reference:
            t_dec, factors = timed(lambda: paper_decompose(ws), torch.device("cpu"))
            if args.quick:
                pairs = [(rng.randrange(n), rng.randrange(n)) for _ in range(min(args.pairs, n * n))]
                t_sample, _ = timed(lambda: paper_matrix(factors, crit, pairs), torch.device("cpu"))
                t_mat = t_sample * (n * n) / len(pairs)
                mat = rank.pairwise_matrix([rank.filter_summaries(w.cpu()) for w in ws], crit)
                pair_txt = f"{t_mat:>9.2f} est."
            else:
                t_mat, mat = timed(lambda: paper_matrix(factors, crit), torch.device("cpu"))
                pair_txt = f"{t_mat:>14.2f}"
            t_greedy, ref_sal = timed(lambda: paper_greedy(mat, distance, strat), torch.device("cpu"))
            t_ref = t_dec + t_mat + t_greedy
            ref_total += t_ref
            same = kept_sets_agree(sal, ref_sal)
            agree += same
            line += f"{t_dec:>12.2f}{pair_txt:>14}{t_greedy:>12.2f}{t_ref:>13.2f}{t_ref / t_fast:>9.0f}x{'yes' if same else 'NO':>11}"
        print(line, flush=True)

    t_model, cpu_model, _ = timed_cpu(
        lambda: rank.rank_groups([ws for _, ws in groups], crit, strat, names=[n for n, _ in groups]),
        device, args.repeats,
    )
    print(f"{arch}: engine, sum of per-group calls {fast_total:.3f} s; whole model in one rank_groups call "
          f"{t_model:.3f} s wall, {cpu_model:.3f} s CPU (best of {args.repeats})")
    if reference:
        label = " (pair loop extrapolated from sampled pairs: --quick)" if args.quick else ""
        print(f"{arch}: paper-style reference total {ref_total:.1f} s{label}; speed-up {ref_total / fast_total:.0f}x "
              f"vs per-group calls, {ref_total / t_model:.0f}x vs one rank_groups call; kept sets identical "
              f"(at 25/50/75 % kept) on {agree}/{len(groups)} groups")
    return {"engine_groups_s": fast_total, "engine_model_s": t_model, "engine_model_cpu_s": cpu_model,
            "reference_s": ref_total}


def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset of " + ", ".join(ARCHS))
    parser.add_argument("--criterion", default="VBD_dis", help="one of: " + ", ".join(rank.PAPER_CRITERIA))
    parser.add_argument("--strategy", default="min_sum", choices=rank.STRATEGIES)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--reference-archs", default="vgg_16_bn",
                        help="archs on which to also time the paper-style implementation ('' for none)")
    parser.add_argument("--quick", action="store_true", help="sample pairs for the reference pair loop and extrapolate")
    parser.add_argument("--pairs", type=int, default=3000, help="sampled ordered pairs per layer with --quick")
    parser.add_argument("--repeats", type=int, default=3, help="engine timings: best of this many runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.reference_archs = {a.strip() for a in args.reference_archs.split(",") if a.strip()}
    if args.threads:
        torch.set_num_threads(args.threads)
    rank.canonical_criterion(args.criterion)
    if rank.canonical_criterion(args.criterion) in rank.BASELINE_CRITERIA:
        parser.error("benchmark a CORING criterion, not a baseline")
    device = torch.device(args.device)
    if (hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1) and torch.get_num_threads() > 1
            and "OMP_WAIT_POLICY" not in os.environ):
        print("note: the machine is oversubscribed; busy-waiting OpenMP threads can make torch ops 5-10x slower. "
              "Use --threads 1 or OMP_WAIT_POLICY=PASSIVE for meaningful timings.")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load} (wall times suffer when the machine is shared), device {device}")
    results = {arch: bench_arch(arch, args, device) for arch in args.archs}
    print("\n=== summary")
    for arch, r in results.items():
        line = (f"{arch:<10} engine whole model {r['engine_model_s']:.3f} s wall / {r['engine_model_cpu_s']:.3f} s CPU "
                f"(per-group calls {r['engine_groups_s']:.3f} s)")
        if r["reference_s"]:
            line += (f"; paper-style {r['reference_s']:.1f} s{' est.' if args.quick else ''}; speed-up "
                     f"{r['reference_s'] / r['engine_groups_s']:.0f}x (per-group) / {r['reference_s'] / r['engine_model_s']:.0f}x (whole model)")
        print(line)


if __name__ == "__main__":
    main()
