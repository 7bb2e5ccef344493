"""Benchmark: the paper's efficiency study (time of the similarity matrix, flattened filters vs HOSVD summaries).

For every conv of VGG-16-BN it times the N x N metric matrix of a criterion computed

- on the full flattened filters (vectors of length Cin*k*k), and
- on the HOSVD summaries (vectors of length Cin, k, k), decomposition time INCLUDED,

both with the batched engine of ``coring.rank`` (best of ``--repeats``). Unless ``--no-per-pair``, it also times
the paper's protocol (``main/measure_time.py`` upstream: one metric call per ordered pair, flattened filters vs
the mode-0 factor u0 only, decomposition excluded) on ``--pairs`` random pairs per layer, extrapolated to all
N^2 pairs and labelled "est.".

It prints a table and writes a PNG (matplotlib, Agg) with the layers on the x axis labelled by their number of
filters: ``--output`` (default ``bench/results/similarity_time.png``). Weights come from
``models.build_model("vgg_16_bn")`` when available, else random weights of the same shapes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench.rank_speed import load_convs, paper_metric, timed  # noqa: E402
from coring import rank  # noqa: E402
from coring.cli import Parser


def per_pair_seconds(vectors: list[torch.Tensor], criterion: str, pairs: list[tuple[int, int]], n: int) -> float:
    """Paper protocol: one metric call per ordered pair (summed over the given vector sets), extrapolated to N^2."""
    metric = paper_metric(criterion)
    cpu = torch.device("cpu")

    def loop() -> None:
        for i, j in pairs:
            for vec in vectors:
                metric(vec[i], vec[j])

    seconds, _ = timed(loop, cpu)
    return seconds * n * n / len(pairs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--criterion", default="VBD_dis", help="one of: " + ", ".join(rank.PAPER_CRITERIA))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="batched timings: best of this many runs")
    parser.add_argument("--pairs", type=int, default=1500, help="sampled pairs per layer for the per-pair protocol")
    parser.add_argument("--no-per-pair", action="store_true", help="skip the paper's per-pair protocol")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "similarity_time.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    crit = rank.canonical_criterion(args.criterion)
    if crit in rank.BASELINE_CRITERIA:
        parser.error("choose a CORING criterion, not a baseline")
    device = torch.device(args.device)
    convs, source = load_convs("vgg_16_bn", args.seed)
    weights = [w.to(device) for w in convs.values()]
    rng = random.Random(args.seed)
    per_pair = not args.no_per_pair

    print(f"VGG-16-BN, criterion {crit}, device {device}, torch threads {torch.get_num_threads()}; weights: {source}")
    print("batched = coring.rank engine (Gram matrices, float64), best of", args.repeats,
          "; HOSVD time includes the decomposition of every filter")
    if per_pair:
        print(f"per-pair = the paper's protocol (one metric call per ordered pair; full vs mode-0 factor u0, "
              f"decomposition excluded), timed on {args.pairs} random pairs per layer and extrapolated (est.)")
    rank.pairwise_matrix([rank.filter_summaries(weights[0])], crit)  # warm-up

    header = f"{'layer':<7}{'N':>5}{'Cin':>5}{'len full':>10}{'len hosvd':>11}{'full s':>10}{'hosvd s':>10}{'decomp s':>10}{'full/hosvd':>12}"
    if per_pair:
        header += f"{'pair full s':>14}{'pair u0 s':>12}{'ratio':>8}"
    print(header)
    rows = []
    for idx, w in enumerate(weights):
        n, cin, kh, kw = w.shape
        t_full, _ = timed(lambda: rank.pairwise_matrix([[w.reshape(n, -1)]], crit), device, args.repeats)
        t_hosvd, _ = timed(lambda: rank.pairwise_matrix([rank.filter_summaries(w)], crit), device, args.repeats)
        t_dec, summaries = timed(lambda: rank.filter_summaries(w), device, args.repeats)
        row = {"layer": idx + 1, "n": n, "full": t_full, "hosvd": t_hosvd, "decomp": t_dec}
        line = (f"conv{idx + 1:<3}{n:>5}{cin:>5}{cin * kh * kw:>10}{sum(s.shape[1] for s in summaries):>11}"
                f"{t_full:>10.4f}{t_hosvd:>10.4f}{t_dec:>10.4f}{t_full / t_hosvd:>11.1f}x")
        if per_pair:
            pairs = [(rng.randrange(n), rng.randrange(n)) for _ in range(args.pairs)]
            flat = w.detach().cpu().double().reshape(n, -1)
            u0 = summaries[0].cpu()
            row["pair_full"] = per_pair_seconds([flat], crit, pairs, n)
            row["pair_u0"] = per_pair_seconds([u0], crit, pairs, n)
            line += f"{row['pair_full']:>10.2f} est{row['pair_u0']:>8.2f} est{row['pair_full'] / row['pair_u0']:>7.1f}x"
        rows.append(row)
        print(line, flush=True)

    total_full = sum(r["full"] for r in rows)
    total_hosvd = sum(r["hosvd"] for r in rows)
    print(f"total batched: full {total_full:.3f} s, HOSVD (decomposition included) {total_hosvd:.3f} s, "
          f"ratio {total_full / total_hosvd:.1f}x")
    if per_pair:
        total_pf = sum(r["pair_full"] for r in rows)
        total_pu = sum(r["pair_u0"] for r in rows)
        print(f"total per-pair (est.): full {total_pf:.1f} s, u0 {total_pu:.1f} s, ratio {total_pf / total_pu:.1f}x")

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    panels = 2 if per_pair else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    x = list(range(1, len(rows) + 1))
    labels = [str(r["n"]) for r in rows]
    ax = axes[0][0]
    ax.plot(x, [r["full"] for r in rows], "o-", label="Flatten (full filters)")
    ax.plot(x, [r["hosvd"] for r in rows], "s-", label="Decomposition (HOSVD, incl. decomposition)")
    ax.set_title(f"Batched engine, {crit}")
    if per_pair:
        ax2 = axes[0][1]
        ax2.plot(x, [r["pair_full"] for r in rows], "o-", label="Flatten (full filters)")
        ax2.plot(x, [r["pair_u0"] for r in rows], "s-", label="Decomposition (u0, excl. decomposition)")
        ax2.set_title(f"Per-pair loop (paper protocol, est.), {crit}")
    for a in axes[0]:
        a.set_xticks(x, labels)
        a.set_xlabel("num_filters / layer (VGG-16-BN convs 1-13)")
        a.set_ylabel("seconds per layer")
        a.set_yscale("log")
        a.grid(True, alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
