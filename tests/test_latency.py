"""The one timing harness (``coring.latency``) and the quick start's timing table."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from coring.latency import choose_threads, compare_latency, format_comparison, spread, time_interleaved
from main.quickstart import _table


def _net(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def test_calls_are_interleaved_with_the_order_reversed_every_other_round():
    order: list[str] = []
    times = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, "cpu", warmup=1,
                             repeats=3)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]  # warm-up, then rounds 0, 1 (reversed), 2
    assert all(len(t["wall"]) == len(t["cpu"]) == 3 for t in times.values())


def test_bad_repeat_counts_are_clear_errors():
    with pytest.raises(ValueError, match="repeats >= 1.*repeats=0"):
        time_interleaved({"a": lambda: None}, "cpu", warmup=0, repeats=0)
    with pytest.raises(ValueError, match="thread counts must be >= 1"):
        choose_threads(lambda: None, [0, 1])


def test_spread_is_the_median_and_the_quartiles():
    s = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.q1, s.q3, s.n) == (3.0, 2.0, 4.0, 5)
    assert s.text(1e3, digits=0, unit=" ms") == "3000 ms (2000-4000)"
    assert spread([7.0]).q1 == spread([7.0]).q3 == 7.0


def test_thread_choice_is_a_candidate_and_leaves_torchs_setting_alone(one_thread):
    x = torch.rand(1, 3, 16, 16)
    net = _net(8).eval()
    with torch.no_grad():
        chosen = choose_threads(lambda: net(x), [1, 2], repeats=2, warmup=0)
    assert chosen in (1, 2) and torch.get_num_threads() == 1


def test_a_model_with_far_less_work_is_measured_faster_with_its_spread(one_thread):
    """16x fewer multiply-accumulates: the paired median speed-up cannot fall below 1 however noisy the machine."""
    models = {"baseline": _net(64), "pruned": _net(16)}
    result = compare_latency(models, 32, batch_size=2, repeats=9, warmup=1, threads=[1])
    assert result.threads == 1 and torch.get_num_threads() == 1
    assert set(result.wall) == {"baseline", "pruned"} and set(result.speedup) == {"pruned"}
    assert result.speedup["pruned"].median > 1
    assert result.speedup["pruned"].q1 <= result.speedup["pruned"].median <= result.speedup["pruned"].q3
    assert all(m.training for m in models.values())  # modes restored
    text = format_comparison(result)
    assert "1 thread;" in text and "interquartile" in text and "speed-up" in text


def test_quickstart_table_explains_the_accuracy_right_after_pruning_and_states_threads_and_spread(one_thread):
    models = {"baseline": _net(16), "pruned": _net(8)}
    timing = {"latency": compare_latency(models, 16, repeats=3, warmup=0, threads=1),
              "throughput": compare_latency(models, 16, batch_size=4, repeats=3, warmup=0, threads=1)}
    results = {"baseline": {"params": 2e6, "flops": 1e8, "top1": 97.0, "count": 360},
               "pruned": {"params": 1e6, "flops": 5e7, "top1": 96.0, "count": 360}}
    table = _table(results, {"top1_pruned": 9.7, "top1_pruned_bn": 36.7}, timing, "resnet_56", "digits")
    assert "stale" in table and "option-A shortcuts" in table and "by position" in table
    latency_row = next(line for line in table.splitlines() if line.startswith("| CPU latency"))
    assert "(1 thread)" in latency_row and "speed-up" in latency_row and latency_row.count("(") >= 4
    assert "interleaved" in table and "median of the per-round ratios" in table
    assert "option-A" not in _table(results, {"top1_pruned": 9.7, "top1_pruned_bn": 36.7}, timing, "vgg_16_bn", "digits")
