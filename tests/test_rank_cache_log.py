"""Every rank-cache lookup logs its hits and misses (one INFO line on ``coring.rank_cache``)."""
from __future__ import annotations

import logging

import torch

from coring.rank_cache import RankCache


def test_each_lookup_logs_how_many_groups_were_reused_and_ranked(tmp_path):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("coring.rank_cache")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        torch.manual_seed(0)
        groups = [[torch.randn(6, 3, 3, 3)], [torch.randn(4, 6, 3, 3)]]
        cache = RankCache(tmp_path / "ranks.pt")
        cache.rank_groups(groups, ["a", "b"], "VBD_dis", "min_sum")
        cache.rank_groups(groups, ["a", "b"], "VBD_dis", "min_sum")
        groups[1][0] += 1.0  # group b changed: a miss
        cache.rank_groups(groups, ["a", "b"], "VBD_dis", "min_sum")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    messages = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert [m.split(": ")[1].split(" (")[0] for m in messages] == [
        "0 of 2 groups reused, 2 to rank", "2 of 2 groups reused, 0 to rank", "1 of 2 groups reused, 1 to rank"]
    assert all(str(tmp_path / "ranks.pt") in m and "VBD_dis" in m for m in messages)
