"""The field's other criteria in the CORING pipeline: FPGM, HRank, CHIP and first-order Taylor.

Each per-channel score is checked against a slow reference written the obvious way (loops over images and
channels); then the criteria run through ``prune`` (K-shot, the rank cache), ``main/prune.py`` and the generic
Torch-Pruning path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from coring import coring_importance, selection
from coring.coring_importance import CoringImportance
from coring.feature_criteria import (
    batches_digest,
    chip_scores,
    draw_batches,
    feature_scores,
    hrank_scores,
    layout_sources,
)
from coring.generic import prune_generic
from coring.prune_run import run_prune
from coring.pruning import prune
from coring.rank import DATA_CRITERIA, canonical_criterion, filter_saliency, select_from_saliency
from coring.rank_cache import RankCache
from data.device_loader import DeviceTensorLoader
from main import prune as prune_entry
from models import build_model, channel_layout
from tests.helpers import randomise_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")

NEW_CRITERIA = ("fpgm", "hrank", "chip", "taylor")


def _batches(count: int, size: int, seed: int = 0, images: int = 4, classes: int = 10):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(images, 3, size, size, generator=gen), torch.randint(0, classes, (images,), generator=gen))
            for _ in range(count)]


class _Tiny(nn.Module):
    """conv-BN-ReLU(in place) twice, then a linear head: enough to check hooks, ReLU and gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        return self.fc(x.mean((2, 3)))


@pytest.fixture()
def tiny() -> _Tiny:
    torch.manual_seed(0)
    return randomise_batchnorm(_Tiny())


# ---------------------------------------------------------------------------------------------- references
def _fpgm_reference(weight: torch.Tensor) -> np.ndarray:
    w = weight.detach().double().reshape(weight.shape[0], -1).numpy()
    return np.array([sum(np.linalg.norm(w[i] - w[j]) for j in range(len(w))) for i in range(len(w))])


def _hrank_reference(maps: torch.Tensor) -> np.ndarray:
    m = maps.detach().numpy()
    return np.array([sum(np.linalg.matrix_rank(m[b, c]) for b in range(m.shape[0])) for c in range(m.shape[1])],
                    dtype=np.float64)


def _chip_reference(maps: torch.Tensor) -> np.ndarray:
    m = maps.detach().double().numpy()
    b, c = m.shape[:2]
    out = np.zeros(c)
    for image in range(b):
        a = m[image].reshape(c, -1)
        full = np.linalg.norm(a, "nuc")
        for channel in range(c):
            masked = a.copy()
            masked[channel] = 0.0
            out[channel] += full - np.linalg.norm(masked, "nuc")
    return out


def _taylor_reference(model: _Tiny, batches) -> dict[str, np.ndarray]:
    """Image by image: the BN outputs as leaves of the loss, then |sum over H, W of a x dL/da| channel by channel."""
    totals = {"bn1": np.zeros(6), "bn2": np.zeros(5)}
    count = 0
    model.eval()
    for images, labels in batches:
        for i in range(images.shape[0]):
            x = images[i:i + 1]
            a1 = model.bn1(model.conv1(x))
            a1.retain_grad()
            a2 = model.bn2(model.conv2(F.relu(a1)))
            a2.retain_grad()
            loss = F.cross_entropy(model.fc(F.relu(a2).mean((2, 3))), labels[i:i + 1])
            loss.backward()
            for name, act in (("bn1", a1), ("bn2", a2)):
                for c in range(act.shape[1]):
                    totals[name][c] += abs(float((act[0, c] * act.grad[0, c]).sum().detach()))
            count += 1
    model.zero_grad(set_to_none=True)
    return {name: total / count for name, total in totals.items()}


def _low_rank_maps(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Maps of known ranks 0..min(h, w) (sums of random outer products), float32."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.randint(0, min(h, w) + 1, (b, c), generator=gen)
    maps = torch.zeros(b, c, h, w)
    for i in range(b):
        for j in range(c):
            for _ in range(int(ranks[i, j])):
                maps[i, j] += torch.outer(torch.randn(h, generator=gen), torch.randn(w, generator=gen))
    return maps


# ---------------------------------------------------------------------------------------------- per-layer scores
def test_fpgm_is_the_summed_distance_to_the_other_filters():
    w = torch.randn(12, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    w[7] = w[2] + 1e-9  # a near-duplicate keeps full accuracy
    np.testing.assert_allclose(filter_saliency(w, "fpgm").numpy(), _fpgm_reference(w), rtol=1e-12)


def test_fpgm_prunes_the_filter_nearest_the_geometric_median_first():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(9, 4, 3, 3, generator=gen) * 3
    w[4] = w.mean(dim=0)  # the centre of the others, whatever their norms
    assert select_from_saliency(filter_saliency(w, "fpgm"), 8).tolist() == [0, 1, 2, 3, 5, 6, 7, 8]


def test_hrank_is_the_summed_matrix_rank_of_each_map():
    maps = _low_rank_maps(3, 5, 6, 7, seed=3)
    assert hrank_scores(maps).tolist() == _hrank_reference(maps).tolist()


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (3, 6, 2, 2), (2, 5, 1, 5)], ids=["C<HW", "C>HW", "row maps"])
def test_chip_is_the_drop_of_the_nuclear_norm_when_a_channel_is_zeroed(shape):
    maps = F.relu(torch.randn(*shape, generator=torch.Generator().manual_seed(4)))
    maps[0, 1] = 0.0  # a dead map is independent of nothing: score 0 on that image
    ref = _chip_reference(maps)
    np.testing.assert_allclose(chip_scores(maps).numpy(), ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())


def test_chip_chunks_over_channels_without_changing_the_scores(monkeypatch):
    maps = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(5))
    whole = chip_scores(maps)
    monkeypatch.setattr("coring.feature_criteria._CHIP_BUDGET", 9 * 5)  # 5 (image, channel) pairs per call
    torch.testing.assert_close(chip_scores(maps), whole, rtol=1e-12, atol=1e-12)


def test_hrank_and_chip_read_relu_of_a_batchnorm_and_a_bare_conv_as_it_is(tiny):
    batches = _batches(2, 6, seed=6, classes=4)
    images = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        conv = tiny.eval().conv1(images)
        act = F.relu(tiny.bn1(conv))
    hrank = feature_scores(tiny, ["bn1", "conv1"], "hrank", batches)
    assert hrank["bn1"].tolist() == (_hrank_reference(act) / len(images)).tolist()
    assert hrank["conv1"].tolist() == (_hrank_reference(conv) / len(images)).tolist()
    chip = feature_scores(tiny, ["bn1"], "chip", batches)
    np.testing.assert_allclose(chip["bn1"].numpy(), _chip_reference(act) / len(images), rtol=1e-7, atol=1e-9)


def test_taylor_matches_a_per_image_per_channel_loop_and_changes_nothing(tiny):
    batches = _batches(2, 5, seed=7, classes=4)
    tiny.train()
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    scores = feature_scores(tiny, ["bn1", "bn2"], "taylor", batches)
    assert tiny.training and all(m.training for m in tiny.modules())
    assert all(p.grad is None for p in tiny.parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())  # BN statistics included
    reference = _taylor_reference(tiny, batches)
    for name in ("bn1", "bn2"):
        np.testing.assert_allclose(scores[name].numpy(), reference[name], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------- names and errors
def test_unknown_criterion_lists_the_new_names():
    with pytest.raises(ValueError) as info:
        canonical_criterion("geometric_median")
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in NEW_CRITERIA)
    assert [canonical_criterion(name.upper()) for name in NEW_CRITERIA] == list(NEW_CRITERIA)


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_driven_criterion_without_batches_is_a_one_line_error(criterion, tiny):
    model = build_model("resnet_56")
    calls = [lambda: prune(model, "resnet_56", [0.2] * 30, criterion),
             lambda: prune(model, "resnet_56", [0.2] * 30, criterion, batches=[]),
             lambda: filter_saliency(torch.randn(4, 3, 3, 3), criterion),
             lambda: CoringImportance(criterion),
             lambda: feature_scores(tiny, ["bn1"], criterion, None)]
    for call in calls:
        with pytest.raises(ValueError, match=f"criterion '{criterion}' is data-driven") as info:
            call()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- built-in pruning
def _widths(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch, rate, size", [("resnet_56", "[0.]+[0.4]*29", 16), ("vgg_16_bn", "[0.5]*12", 32)])
@pytest.mark.parametrize("criterion", NEW_CRITERIA)
def test_prune_gives_the_widths_of_the_compress_rate(arch, rate, size, criterion):
    torch.manual_seed(8)
    model = randomise_batchnorm(build_model(arch)).eval()
    result = prune(model, arch, rate, criterion, batches=_batches(1, size, seed=9))
    assert _widths(result.model) == _widths(build_model(arch, rate))
    assert result.model(torch.randn(2, 3, size, size)).shape == (2, 10)


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_dead_channels_are_pruned_first(criterion):
    torch.manual_seed(10)
    model = randomise_batchnorm(build_model("vgg_16_bn")).eval()
    dead = [1, 5, 9, 30, 41, 63]  # BN scale 0, shift < 0: the ReLU output is 0 everywhere
    with torch.no_grad():
        model.features.norm0.weight[dead] = 0.0
        model.features.norm0.bias[dead] = -1.0
    rate = [0.1] + [0.0] * 11  # 6 or 7 of the 64 filters of the first conv go
    result = prune(model, "vgg_16_bn", rate, criterion, batches=_batches(1, 32, seed=11))
    kept = result.keep["features.conv0"].tolist()
    assert len(kept) == build_model("vgg_16_bn", rate).features.conv0.out_channels < 64 - len(dead) + 1
    assert not set(dead) & set(kept)


def test_layout_sources_read_the_last_batchnorm_after_each_scored_conv():
    for arch, group, expected in [("resnet_56", "layer1.out", [f"layer1.{i}.bn2" for i in range(9)]),
                                  ("mobilenet_v2", "features.2.expand", ["features.2.conv.4"]),
                                  ("mobilenet_v2", "features.0", ["features.1.conv.1"]),
                                  ("densenet_40", "conv1", ["conv1"])]:
        model = build_model(arch)
        sources = layout_sources(channel_layout(model).group(group), dict(model.named_modules()))
        assert sources == expected, arch


def test_kshot_prunes_twice_with_a_data_driven_criterion():
    torch.manual_seed(12)
    model = randomise_batchnorm(build_model("resnet_56")).eval()
    batches = _batches(1, 16, seed=13)
    rates = [0.0] + [0.4] * 29
    half = prune(model, "resnet_56", [r / 2 for r in rates], "taylor", batches=batches).model
    full = prune(half, "resnet_56", rates, "taylor", batches=batches)
    assert _widths(full.model) == _widths(build_model("resnet_56", rates))


def test_rank_cache_reuses_a_data_driven_rank_only_for_the_same_data(tmp_path, monkeypatch):
    torch.manual_seed(14)
    model = randomise_batchnorm(build_model("resnet_56")).eval()
    rate = "[0.]+[0.4]*29"
    first, other = _batches(1, 16, seed=15), _batches(1, 16, seed=16)
    cache = RankCache(tmp_path / "ranks.pt")
    expected = prune(model, "resnet_56", rate, "hrank", cache=cache, batches=first).keep
    cache.save()
    scored = []
    original = selection.feature_scores
    monkeypatch.setattr(selection, "feature_scores", lambda *a, **k: scored.append(1) or original(*a, **k))
    cache = RankCache(tmp_path / "ranks.pt")
    again = prune(model, "resnet_56", rate, "hrank", cache=cache, batches=[(x.clone(), y.clone()) for x, y in first])
    assert not scored and all(torch.equal(again.keep[g], expected[g]) for g in expected)
    prune(model, "resnet_56", rate, "hrank", cache=cache, batches=other)
    assert len(scored) == 1
    prune(model, "resnet_56", rate, "hrank", cache=cache, batches=first + other)  # more batches: another key
    assert len(scored) == 2
    assert batches_digest(first) != batches_digest(first + other)


def test_weight_only_criteria_keep_their_cache_keys(tmp_path):
    cache = RankCache(tmp_path / "ranks.pt")
    w = torch.randn(8, 3, 3, 3)
    cache.put("conv", [w], "fpgm", "min_sum", 0, filter_saliency(w, "fpgm"))
    assert set(next(iter(cache._entries.values()))) == {"criterion", "strategy", "seed", "hash", "saliency"}
    assert torch.equal(cache.get("conv", [w], "fpgm", "min_sum"), filter_saliency(w, "fpgm"))


def test_draw_batches_takes_epoch_zero_and_leaves_the_loader_epoch_alone():
    gen = torch.Generator().manual_seed(17)
    loader = DeviceTensorLoader(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=gen),
                                torch.randint(0, 10, (20,), generator=gen), 4, shuffle=True, augment=True, seed=3)
    loader.set_epoch(5)
    drawn = draw_batches(loader, 2)
    assert loader.epoch == 5 and len(drawn) == 2
    assert batches_digest(drawn) == batches_digest(draw_batches(loader, 2))
    loader.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(drawn, loader))


# ---------------------------------------------------------------------------------------------- entry point
def test_prune_run_scores_the_training_batches_and_caches_them(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ckpt = tmp_path / "base.pth.tar"
    torch.save({"state_dict": build_model("resnet_56").state_dict(), "epoch": 0}, ckpt)

    def args(*extra: str):
        return prune_entry.build_parser().parse_args(
            ["--arch", "resnet_56", "--compress_rate", "[0.]+[0.4]*29", "--pretrain_dir", str(ckpt), "--dataset",
             "digits", "--job_dir", str(tmp_path / "job"), "--device", "cpu", "--batch_size", "8", "--limit_train",
             "32", "--limit_test", "16", "--bn_recalib", "16", "--skip_baseline_eval", "--criterion", "chip",
             "--rank_batches", "1", *extra])

    summary = run_prune(args())
    assert summary["criterion"] == "chip"
    scored = []
    original = selection.feature_scores
    monkeypatch.setattr(selection, "feature_scores", lambda *a, **k: scored.append(1) or original(*a, **k))
    again = run_prune(args("--restart"))  # same seed: the same first batch, so the cache answers
    assert not scored and again["pruned"] == summary["pruned"]
    run_prune(args("--seed", "1", "--restart"))  # another order of the training set: scored again
    assert len(scored) == 1
    assert prune_entry.main(["--arch", "resnet_56", "--compress_rate", "[0.]+[0.4]*29", "--pretrain_dir", str(ckpt),
                             "--dataset", "digits", "--job_dir", str(tmp_path / "j2"), "--device", "cpu",
                             "--criterion", "hrank", "--rank_batches", "0"]) == 2


# ---------------------------------------------------------------------------------------------- generic path
@pytest.fixture()
def resnet_tiny() -> ResNet:
    """A torchvision ResNet of one BasicBlock per stage (resnet18's layers, a quarter of the depth)."""
    torch.manual_seed(18)
    return randomise_batchnorm(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)).eval()


@pytest.mark.parametrize("criterion", ["hrank", "fpgm"])
def test_generic_path_prunes_a_torchvision_resnet(resnet_tiny, criterion):
    batches = _batches(1, 32, seed=19)
    pruned, record = prune_generic(resnet_tiny, torch.randn(1, 3, 32, 32), criterion=criterion, channel_ratio=0.25,
                                   batches=batches)
    assert record["criterion"] == criterion
    assert pruned.layer1[0].conv1.out_channels == 48 and pruned.layer4[0].conv1.out_channels == 384
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # a block's first conv forms a group of its own: its kept filters are the top-48 of its own scores
    if criterion == "fpgm":
        saliency = filter_saliency(resnet_tiny.layer1[0].conv1.weight, "fpgm")
    else:
        saliency = feature_scores(resnet_tiny, ["layer1.0.bn1"], "hrank", batches)["layer1.0.bn1"]
    assert record["kept"]["layer1.0.conv1"] == select_from_saliency(saliency, 48).tolist()


def test_generic_kshot_rescores_the_pruned_model(resnet_tiny, monkeypatch):
    widths = []
    original = coring_importance.feature_scores

    def spy(model, *args, **kwargs):
        widths.append(model.layer2[0].conv1.out_channels)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(coring_importance, "feature_scores", spy)
    pruned, _ = prune_generic(resnet_tiny, torch.randn(1, 3, 32, 32), criterion="taylor", channel_ratio=0.5,
                              iterative_steps=2, batches=_batches(1, 32, seed=20))
    assert widths == [128, 96]  # once per shot, on the partly pruned model the second time
    assert pruned.layer2[0].conv1.out_channels == 64
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)
