"""bench/kept_filters.py: which filters a criterion keeps (the ResNet-56 diagnosis of docs/criteria_study.md)."""
from __future__ import annotations

import torch

from bench.kept_filters import group_norms, kept_statistics, summarise
from models import build_model


def test_l1_keeps_the_largest_norm_share_and_agrees_with_itself():
    torch.manual_seed(0)
    result = summarise("resnet_56", "[0.]+[0.5]*29", None, ["l1", "random"], dead=0.25)
    assert result["l1"]["mean"]["jaccard_l1"] == 1.0
    assert result["l1"]["mean"]["norm_kept"] > result["random"]["mean"]["norm_kept"]
    assert 0.0 < result["random"]["mean"]["jaccard_l1"] < 1.0


def test_near_dead_filters_are_counted_among_the_kept_ones():
    model = build_model("resnet_56")
    with torch.no_grad():
        model.layer1[0].conv1.weight[:4].mul_(1e-3)  # four near-dead filters in group layer1.0.mid
    norms = group_norms(model, "resnet_56")
    keep = {"layer1.0.mid": torch.arange(8)}  # keeps the four dead ones and four live ones
    stats = kept_statistics(norms, keep, {"layer1.0.mid": torch.arange(8, 16)}, dead=0.25)["layer1.0.mid"]
    assert stats["dead_kept"] == 0.5 and stats["dead_in_group"] == 0.25 and stats["jaccard_l1"] == 0.0


def test_outlyingness_is_one_for_a_typical_sample_and_high_for_an_outlier():
    from bench.kept_filters import group_outlyingness

    model = build_model("resnet_56")
    with torch.no_grad():
        conv = model.layer1[0].conv1.weight
        conv.copy_(torch.randn(1, *conv.shape[1:]).expand_as(conv) + 0.01 * torch.randn_like(conv))
        conv[0] = torch.randn_like(conv[0])  # one filter unlike the fifteen near-copies
    score = group_outlyingness(model, "resnet_56")["layer1.0.mid"]
    assert int(score.argmax()) == 0
    norms = group_norms(model, "resnet_56")
    everyone = kept_statistics(norms, {"layer1.0.mid": torch.arange(15)}, {"layer1.0.mid": torch.arange(15)},
                               dead=0.25, outlyingness={"layer1.0.mid": score})["layer1.0.mid"]
    assert everyone["outlying_kept"] > 0.9
    typical = kept_statistics(norms, {"layer1.0.mid": torch.arange(1, 9)}, {"layer1.0.mid": torch.arange(8)},
                              dead=0.25, outlyingness={"layer1.0.mid": score})["layer1.0.mid"]
    assert typical["outlying_kept"] < everyone["outlying_kept"]
