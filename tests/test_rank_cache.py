"""The per-model saliency cache (coring.rank_cache): hits while nothing changed, misses otherwise, survives reload."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from coring import rank_cache
from coring.rank import filter_saliency
from coring.rank_cache import RankCache, weights_hash


@pytest.fixture()
def weights() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(16, 8, 3, 3, generator=gen), torch.randn(16, 4, 1, 1, generator=gen)]


def test_cache_hits_when_nothing_changed(tmp_path, weights) -> None:
    cache = RankCache(tmp_path / "model.pth.tar.ranks.pt")
    assert cache.get("layer1", weights, "VBD_dis", "min_sum", 0) is None
    sal = filter_saliency(weights[0])
    cache.put("layer1", weights, "VBD_dis", "min_sum", 0, sal)
    hit = cache.get("layer1", [w.clone() for w in weights], "vbd", "MIN_SUM", 0)  # same values, alias names
    assert hit is not None and torch.equal(hit, sal)


@pytest.mark.parametrize(
    "change",
    ["weights", "criterion", "strategy", "seed", "name", "dtype"],
)
def test_cache_misses_when_weights_or_settings_change(tmp_path, weights, change) -> None:
    cache = RankCache(tmp_path / "r.pt")
    cache.put("layer1", weights, "VBD_dis", "min_sum", 0, torch.arange(16.0))
    args = {"name": "layer1", "weights": weights, "criterion": "VBD_dis", "strategy": "min_sum", "seed": 0}
    if change == "weights":
        changed = [w.clone() for w in weights]
        changed[1][3, 2, 0, 0] += 1e-6
        args["weights"] = changed
    elif change == "dtype":
        args["weights"] = [w.double() for w in weights]
    else:
        args[change] = {"criterion": "Euclide_dis", "strategy": "min_min", "seed": 1, "name": "layer2"}[change]
    assert cache.get(**args) is None


def test_cache_file_reloads_and_is_written_atomically(tmp_path, weights) -> None:
    path = tmp_path / "sub" / "ckpt.pth.tar.ranks.pt"
    cache = RankCache(path)
    cache.put("conv", weights[:1], "cosine", "sum", 3, torch.linspace(0, 1, 16))
    cache.save()
    assert not cache.dirty
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    reloaded = RankCache(path)
    assert len(reloaded) == 1 and "conv" in reloaded
    assert torch.equal(reloaded.get("conv", weights[:1], "cosine_sim", "sum", 3), torch.linspace(0, 1, 16).double())
    assert torch.load(path, weights_only=True)["entries"]["conv|cosine_sim|sum|3"]["hash"] == weights_hash(weights[:1])


def test_ranks_of_several_criteria_live_side_by_side(tmp_path, weights) -> None:
    cache = RankCache(tmp_path / "r.pt")
    cache.put("conv", weights, "vbd", "min_sum", 0, torch.zeros(16))
    cache.put("conv", weights, "cosine", "min_sum", 0, torch.ones(16))
    cache.save()
    reloaded = RankCache(tmp_path / "r.pt")
    assert torch.equal(reloaded.get("conv", weights, "VBD_dis", "min_sum", 0), torch.zeros(16, dtype=torch.float64))
    assert torch.equal(reloaded.get("conv", weights, "cosine_sim", "min_sum", 0), torch.ones(16, dtype=torch.float64))


def test_failed_save_keeps_the_previous_file(tmp_path, weights) -> None:
    path = tmp_path / "r.pt"
    cache = RankCache(path)
    cache.put("a", weights, "vbd", "min_sum", 0, torch.zeros(16))
    cache.save()
    before = path.read_bytes()
    cache.put("b", weights, "vbd", "min_sum", 0, torch.ones(16))
    with mock.patch.object(rank_cache.torch, "save", side_effect=OSError("disk full")), pytest.raises(OSError):
        cache.save()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.pt"]


def test_unreadable_cache_file_is_ignored_with_a_warning(tmp_path, weights) -> None:
    path = tmp_path / "r.pt"
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable rank cache"):
        cache = RankCache(path)
    assert len(cache) == 0


def test_cached_rank_groups_reuses_hits_and_ranks_only_misses(tmp_path, weights) -> None:
    cache = RankCache.for_checkpoint(tmp_path / "model.pth.tar")
    assert cache.path.name == "model.pth.tar.ranks.pt"
    groups = [weights[:1], [torch.randn(16, 4, 3, 3)]]
    first = cache.rank_groups(groups, ["g0", "g1"], "VBD_dis", "min_sum")
    cache.save()
    reloaded = RankCache(cache.path)
    with mock.patch.object(rank_cache, "rank_groups", side_effect=AssertionError("should be cached")):
        again = reloaded.rank_groups(groups, ["g0", "g1"], "vbd", "min_sum")
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    groups[1] = [torch.randn(16, 4, 3, 3)]
    with mock.patch.object(rank_cache, "rank_groups", wraps=rank_cache.rank_groups) as spy:
        third = reloaded.rank_groups(groups, ["g0", "g1"], "vbd", "min_sum")
    assert spy.call_count == 1 and len(spy.call_args.args[0]) == 1  # only the changed group is ranked
    assert torch.equal(third[0], first[0])
    assert torch.equal(third[1], filter_saliency(groups[1][0], name="g1"))
