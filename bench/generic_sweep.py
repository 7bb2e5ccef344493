"""Prune every torchvision classification model with CORING through Torch-Pruning; write docs/generic_models.md.

    python bench/generic_sweep.py                          # the whole sweep (~30 min on 2 CPU cores), resumable
    python bench/generic_sweep.py --models resnet18,mobilenet_v2 --out /tmp/sweep.md
    python bench/generic_sweep.py --one resnet18           # one model, one JSON line (what the sweep runs)

Each model runs in its own process (memory, crashes and a per-model timeout stay contained): random weights
(``weights=None``, 1000 classes), ``channel_ratio`` of every prunable group's channels removed with CORING
(``VBD_dis`` / ``min_sum`` by default, one shot), then the checkpoint is saved, read back with
``torch.load(weights_only=True)``, rebuilt by replaying the pruning history, and its outputs compared with the
pruned model's. FLOPs are multiply-accumulates counted by ``torch_pruning.utils.count_ops_and_params`` at the
sweep's input size (64x64 unless a model needs more). Results are cached in ``--cache`` (JSON, one entry per
model), so an interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coring.cli import Parser
from coring.generic import (
    NOT_CNN_PREFIXES,
    load_user_model,
    prune_generic,
    rebuild_from_checkpoint,
    save_generic,
    tp_version,
)

ROOT = Path(__file__).resolve().parent.parent

#: Input side per model where 64 is too small (inception_v3's stem needs >= 75).
INPUT_SIZE = {"inception_v3": 80}
DEFAULT_SIZE = 64
#: Why a family fails, for the report (keyed by name prefix).
FAILURE_NOTES = {
    "shufflenet_v2": "Torch-Pruning's tracer fails on channel_shuffle's view(b, 2, c/2, h, w): its reshape "
                     "index mapping divides by zero, at any input size",
}


def skip_reason(name: str) -> str | None:
    """Why a torchvision classification model is not pruned by the sweep, or None."""

    if name.startswith(NOT_CNN_PREFIXES):
        return ("not a CNN (attention blocks): CORING ranks conv filters, and Torch-Pruning needs per-model "
                "attention-head settings")
    return None


def run_one(name: str, ratio: float, criterion: str, strategy: str, num_classes: int = 1000) -> dict[str, Any]:
    """Prune one torchvision model, save, reload, compare; a dict of plain results (raises on failure)."""
    import torch


    torch.manual_seed(0)
    size = INPUT_SIZE.get(name, DEFAULT_SIZE)
    spec = f"torchvision:{name}"
    t0 = time.perf_counter()
    model = load_user_model(spec, num_classes).eval()
    x = torch.randn(2, 3, size, size)
    t1 = time.perf_counter()
    pruned, record = prune_generic(model, x[:1], channel_ratio=ratio, criterion=criterion, strategy=strategy)
    t2 = time.perf_counter()
    pruned.eval()
    with torch.no_grad():
        expected = pruned(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pruned.pth.tar"
        save_generic(path, pruned, record, {"source": spec, "num_classes": num_classes})
        size_mb = path.stat().st_size / 2**20
        del pruned, model
        rebuilt = rebuild_from_checkpoint(torch.load(path, weights_only=True)).eval()
    t3 = time.perf_counter()
    with torch.no_grad():
        got = rebuilt(x)
    return {
        "name": name, "status": "ok", "input": size, "ratio": ratio, "criterion": record["criterion"],
        "strategy": record["strategy"],
        "params_before": record["params_before"], "params_after": record["params_after"],
        "flops_before": record["flops_before"], "flops_after": record["flops_after"],
        "flop_reduction": 1 - record["flops_after"] / record["flops_before"],
        "param_reduction": 1 - record["params_after"] / record["params_before"],
        "reload_equal": bool(torch.equal(got, expected)),
        "reload_max_diff": float((got - expected).abs().max()),
        "output_shape": list(got.shape), "output_layers": record["output_layers"],
        "groups_pruned": sum(1 for h in record["history"] if h[1]),
        "checkpoint_mb": round(size_mb, 1),
        "seconds_build": round(t1 - t0, 1), "seconds_prune": round(t2 - t1, 1), "seconds_reload": round(t3 - t2, 1),
    }


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:300]


def sweep_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one model in a subprocess (with ``--timeout``) and return its result dict."""
    reason = skip_reason(name)
    if reason is not None:
        return {"name": name, "status": "skipped", "reason": reason}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--ratio", str(args.ratio),
           "--criterion", args.criterion, "--strategy", args.strategy, "--threads", str(args.threads)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(args.threads)})
    except subprocess.TimeoutExpired:
        return {"name": name, "status": "failed", "reason": f"timeout after {args.timeout} s on this machine"}
    result_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and result_lines:
        result = json.loads(result_lines[-1])
    else:
        reason = _one_line(proc.stderr or proc.stdout).replace("coring.generic.GenericModelError: ", "")
        note = next((text for prefix, text in FAILURE_NOTES.items() if name.startswith(prefix)), None)
        result = {"name": name, "status": "failed", "reason": reason + (f" ({note})" if note else "")}
    result["seconds_total"] = round(time.perf_counter() - start, 1)
    return result


def _m(value: int) -> str:
    return f"{value / 1e6:,.1f}M" if value >= 1e5 else f"{value / 1e6:.3f}M"


def write_markdown(results: list[dict[str, Any]], path: Path, args: argparse.Namespace) -> None:
    import torch
    import torchvision


    ok = [r for r in results if r["status"] == "ok"]
    bad = [r for r in results if r["status"] == "failed"]
    skipped = [r for r in results if r["status"] == "skipped"]
    lines = [
        "# CORING on torchvision classification models (generic path)",
        "",
        f"Generated by `python bench/generic_sweep.py` ({time.strftime('%Y-%m-%d')}; torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, torch-pruning {tp_version()}, "
        f"{platform.machine()} CPU).",
        "",
        f"Every model of `torchvision.models.list_models(module=torchvision.models)`, random weights, 1000 classes: "
        f"{args.ratio:.0%} of the channels of every prunable Torch-Pruning group removed with CORING "
        f"(`{args.criterion}` / `{args.strategy}`, one shot, uniform ratio; the classifier's outputs are kept). "
        "FLOPs are multiply-accumulates by `torch_pruning.utils.count_ops_and_params` at the input size shown. "
        "\"Reload\" is the saved checkpoint read with `torch.load(weights_only=True)`, rebuilt by "
        "`coring.generic.rebuild_from_checkpoint` (pruning history replayed), outputs compared with the pruned "
        "model's: `exact` means bitwise equal. \"prune s\" is the time of `coring.generic.prune_generic` (tracing, "
        f"ranking, surgery) on {args.threads} torch thread(s) of a shared 2-core CPU.",
        "",
        f"{len(ok)} pruned, {len(bad)} failed, {len(skipped)} skipped (not CNNs).",
        "",
        "| model | input | params | FLOPs (MACs) | FLOPs removed | params removed | reload | prune s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(ok, key=lambda r: r["name"]):
        reload = "exact" if r["reload_equal"] else f"max diff {r['reload_max_diff']:.1e}"
        lines.append(f"| {r['name']} | {r['input']} | {_m(r['params_before'])} -> {_m(r['params_after'])} | "
                     f"{_m(r['flops_before'])} -> {_m(r['flops_after'])} | {100 * r['flop_reduction']:.1f}% | "
                     f"{100 * r['param_reduction']:.1f}% | {reload} | {r['seconds_prune']:.0f} |")
    if bad:
        lines += ["", "## Failures", "", "| model | reason |", "|---|---|"]
        lines += [f"| {r['name']} | {r['reason'].replace('|', '/')} |" for r in sorted(bad, key=lambda r: r["name"])]
    if skipped:
        lines += ["", "## Skipped", "", "| model | reason |", "|---|---|"]
        lines += [f"| {r['name']} | {r['reason']} |" for r in sorted(skipped, key=lambda r: r["name"])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--ratio", type=float, default=0.3, help="fraction of every group's channels removed")
    parser.add_argument("--criterion", default="VBD_dis")
    parser.add_argument("--strategy", default="min_sum")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per model process (1 avoids oversubscribing shared cores)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "generic_models.md"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "coring_generic_sweep.json"),
                        help="JSON results cache; models already in it are not rerun")
    parser.add_argument("--rerun", default="", help="comma-separated models to rerun even if cached")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one is not None:
        import warnings

        warnings.simplefilter("ignore")
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.one, args.ratio, args.criterion, args.strategy)), flush=True)
        return 0

    import torchvision

    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    cache_path = Path(args.cache)
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    rerun = set(filter(None, args.rerun.split(",")))
    for name in names:
        if name in cache and name not in rerun:
            continue
        result = sweep_model(name, args)
        cache[name] = result
        cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
        extra = (f"FLOPs -{100 * result['flop_reduction']:.1f}%, reload "
                 f"{'exact' if result['reload_equal'] else result['reload_max_diff']}"
                 if result["status"] == "ok" else result["reason"])
        print(f"{name:24s} {result['status']:8s} {result.get('seconds_total', 0):7.1f}s  {extra}", flush=True)
    write_markdown([cache[n] for n in names if n in cache], Path(args.out), args)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
