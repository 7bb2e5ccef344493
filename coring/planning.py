"""Plan a compression before running it: per-group widths, params, FLOPs and reductions."""
from __future__ import annotations

from typing import Any

from coring.counting import count_complexity
from models import arch_spec, build_model, channel_layout
from models.compress import as_rate_list, format_compress_rate

__all__ = ["plan_compression", "format_plan"]


def plan_compression(arch: str, compress_rate: str | list[float] | None) -> dict[str, Any]:
    """Widths of every channel group and the complexity of the slim model against the unpruned one."""
    spec = arch_spec(arch)
    rates = as_rate_list(compress_rate, spec.num_rates, arch)
    base, slim = build_model(arch), build_model(arch, rates)
    layout = channel_layout(base)
    base_widths, slim_widths = layout.widths(base), channel_layout(slim).widths(slim)
    widths = [{"group": g.name, "rate_index": g.rate_index,
               "rate": _rate_of(rates, g.rate_index),
               "original": base_widths[g.name], "pruned": slim_widths[g.name]} for g in layout.groups]
    base_c = count_complexity(base, spec.input_size)
    slim_c = count_complexity(slim, spec.input_size)
    result: dict[str, Any] = {
        "arch": arch,
        "compress_rate": compress_rate if isinstance(compress_rate, str) else format_compress_rate(rates),
        "rates": rates,
        "input_size": spec.input_size,
        **slim_c.as_dict(),
        "baseline": base_c.as_dict(),
        "reduction_pct": {
            key: round(100.0 * (1 - slim_c.as_dict()[key] / base_c.as_dict()[key]), 2)
            for key in base_c.as_dict()
        },
        "widths": widths,
    }
    return result


def _rate_of(rates: list[float], index: int | None) -> float | None:
    """The rate that sets a group; entries past the list are 0 (VGG's 13th conv under the paper's 12 rates)."""
    if index is None:
        return None
    return rates[index] if index < len(rates) else 0.0


def _millions(value: int) -> str:
    return f"{value / 1e6:.2f}M" if value < 1e9 else f"{value / 1e9:.3f}G"


def format_plan(plan: dict[str, Any]) -> str:
    """A readable table of a plan: the widths, then params and FLOPs of the unpruned and the slim network (and the
    reduction) by every counter."""
    lines = [f"{plan['arch']}  compress_rate={plan['compress_rate']}", "",
             f"{'group':<34}{'rate':>6}{'original':>10}{'pruned':>8}"]
    for row in plan["widths"]:
        rate = "-" if row["rate"] is None else f"{row['rate']:.2f}"
        mark = "" if row["original"] == row["pruned"] else "  *"
        lines.append(f"{row['group']:<34}{rate:>6}{row['original']:>10}{row['pruned']:>8}{mark}")
    lines += ["", f"{'':<14}{'params':^28}{'FLOPs':^30}",
              f"{'counter':<14}{'unpruned':>10}{'pruned':>10}{'(-%)':>8}{'unpruned':>11}{'pruned':>11}{'(-%)':>8}"]
    base = plan["baseline"]
    for counter in ("min", "thop", "ptflops", "conv_linear"):
        p_key = "params" if counter == "min" else f"params_{counter}"
        f_key = "flops" if counter == "min" else f"flops_{counter}"
        lines.append(f"{counter:<14}{_millions(base[p_key]):>10}{_millions(plan[p_key]):>10}"
                     f"{plan['reduction_pct'][p_key]:>7.1f}%{_millions(base[f_key]):>11}{_millions(plan[f_key]):>11}"
                     f"{plan['reduction_pct'][f_key]:>7.1f}%")
    lines.append("(FLOPs are multiply-accumulates at one input of "
                 f"{plan['input_size']}x{plan['input_size']}; 'min' is min(thop, ptflops) as the paper's test.py prints)")
    return "\n".join(lines)
