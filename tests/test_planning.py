"""``prune.py --dry_run``'s table: the README promises params and FLOPs of the slim and the unpruned network."""
from __future__ import annotations

import re

from coring.planning import format_plan, plan_compression


def test_the_plan_table_prints_unpruned_and_pruned_totals_by_every_counter():
    plan = plan_compression("resnet_56", "[0.]+[0.18]*29")
    text = format_plan(plan)
    assert "unpruned" in text and "pruned" in text
    for counter in ("min", "thop", "ptflops", "conv_linear"):
        suffix = "" if counter == "min" else f"_{counter}"
        line = next(line for line in text.splitlines() if line.startswith(f"{counter} "))
        numbers = re.findall(r"[\d.]+[MG]|[\d.]+%", line)
        assert numbers == [f"{plan['baseline']['params' + suffix] / 1e6:.2f}M", f"{plan['params' + suffix] / 1e6:.2f}M",
                           f"{plan['reduction_pct']['params' + suffix]:.1f}%",
                           f"{plan['baseline']['flops' + suffix] / 1e6:.2f}M", f"{plan['flops' + suffix] / 1e6:.2f}M",
                           f"{plan['reduction_pct']['flops' + suffix]:.1f}%"]
