"""CoringImportance: CORING saliency per channel of a Torch-Pruning group, higher = keep."""
import warnings

import pytest
import torch
import torch_pruning as tp
from torch import nn

from coring.coring_importance import CoringImportance, ranks_from_saliency, scored_layers
from coring.rank import group_saliency, select_from_saliency

pytestmark = pytest.mark.usefixtures("one_thread")


class _Residual(nn.Module):
    """stem -> two residual blocks (coupled outputs) -> depthwise/pointwise branch -> linear hidden -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
        self.block2 = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
        self.expand = nn.Conv2d(8, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.project = nn.Conv2d(12, 10, 1)
        self.hidden = nn.Linear(10, 7)
        self.head = nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.block1(x)
        x = x + self.block2(x)
        x = self.project(torch.relu(self.dw(torch.relu(self.expand(x)))))
        x = torch.relu(self.hidden(x.mean((2, 3))))
        return self.head(x)


def _graph(model: nn.Module) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 8, 8))


def _group(dg: tp.DependencyGraph, module: nn.Module) -> tp.dependency.Group:
    for group in dg.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        if any(dep.target.module is module for dep, _ in group):
            return group
    raise AssertionError("no group holds the module")


def test_residual_stage_is_scored_on_all_coupled_convs():
    torch.manual_seed(0)
    model = _Residual().eval()
    group = _group(_graph(model), model.stem)
    names = sorted(name for name, _ in scored_layers(group))
    assert names == ["block1.2", "block2.2", "stem"]
    scores = CoringImportance("VBD_dis", "min_sum")(group)
    names_of = {m: n for n, m in model.named_modules()}
    expected = group_saliency([w for _, w in scored_layers(group)], "VBD_dis", "min_sum",
                              name=names_of[group[0].dep.target.module])
    assert torch.equal(scores, ranks_from_saliency(expected))


def test_depthwise_conv_follows_the_conv_that_feeds_it():
    model = _Residual().eval()
    group = _group(_graph(model), model.expand)
    assert [name for name, _ in scored_layers(group)] == ["expand"]


def test_linear_rows_are_ranked_as_one_by_one_filters():
    torch.manual_seed(1)
    model = _Residual().eval()
    group = _group(_graph(model), model.hidden)
    layers = scored_layers(group)
    assert [name for name, _ in layers] == ["hidden"]
    scores = CoringImportance("cosine_sim", "min_min")(group)
    assert torch.equal(scores, ranks_from_saliency(group_saliency([model.hidden.weight], "cosine_sim", "min_min",
                                                                  name="hidden")))


def test_group_without_conv_output_falls_back_to_l2_with_a_warning():
    model = _Residual().eval()
    dg = _graph(model)
    group = dg.get_pruning_group(model.stem, tp.prune_conv_in_channels, [0, 1, 2])
    with pytest.warns(UserWarning, match="falling back to the L2 magnitude"):
        scores = CoringImportance()(group)
    assert scores.shape == (3,)


def test_duplicate_filter_is_pruned_first():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    with torch.no_grad():
        model[0].weight[11] = model[0].weight[5]
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, 8, 8), importance=CoringImportance("VBD_dis"),
                                  pruning_ratio=1 / 16, ignored_layers=[model[2]])
    pruner.step()
    removed = pruner.pruning_history()[0][2]
    assert removed in ([5], [11])
    assert model[0].out_channels == 15


@pytest.fixture(scope="module")
def stem_group() -> tp.dependency.Group:
    torch.manual_seed(3)
    model = _Residual().eval()
    return _group(_graph(model), model.stem)


@pytest.mark.parametrize("criterion", ["VBD_dis", "Euclide_dis", "cosine_sim", "Manhattan_dis", "Pearson_sim",
                                       "SNR_dis", "vbd", "l1", "l2", "random"])
@pytest.mark.parametrize("strategy", ["min_sum", "min_min", "sum"])
def test_every_criterion_and_strategy_scores_each_channel(stem_group, criterion, strategy):
    scores = CoringImportance(criterion, strategy, seed=4)(stem_group)
    assert scores.shape == (8,)
    assert sorted(scores.tolist()) == list(range(8))  # a strict order: no ties left for topk to break


def test_unknown_names_are_rejected_up_front():
    with pytest.raises(ValueError, match="unknown criterion"):
        CoringImportance("nope")
    with pytest.raises(ValueError, match="unknown strategy"):
        CoringImportance("VBD_dis", "greedy")


def test_ranks_drop_what_select_from_saliency_drops_ties_included():
    saliency = torch.tensor([3.0, 1.0, 1.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    ranks = ranks_from_saliency(saliency)
    for n_keep in range(1, 7):
        dropped = set(torch.topk(ranks, k=6 - n_keep, largest=False).indices.tolist())
        kept = set(range(6)) - dropped
        assert sorted(kept) == select_from_saliency(saliency, n_keep).tolist()


def test_no_warning_for_ordinary_groups():
    model = _Residual().eval()
    dg = _graph(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for group in dg.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
            CoringImportance()(group)
