"""Complete weight transfer: the slim model computes what the original computes on the kept channels."""
import pytest
import torch
from torch import nn

from coring.pruning import prune, prune_model, shot_rates
from coring.surgery import SurgeryError, transfer_weights
from models import arch_spec, build_model, channel_layout, list_models
from models.compress import parse_compress_rate
from tests.helpers import randomise_batchnorm

SPEC_RATE = {
    "vgg_16_bn": "[0.21]*7+[0.75]*5",
    "densenet_40": "[0.]+[0.3]*12+[0.1]+[0.3]*12+[0.1]+[0.3]*12",
    "googlenet": "[0.3]+[0.6]*2+[0.7]*5+[0.8]*2",
    "mobilenet_v2": "[0.]+[0.2]+[0.3]*2+[0.4]*2+[0.5]*2",
    "resnet_50": "[0.]+[0.5]*3+[0.6]*16",
    # option-A shortcuts pass channels by position: only block middles change here (see README)
    "resnet_56": "[0.]*3+[0.4]*27",
    "resnet_110": "[0.]*3+[0.4]*54",
}


def _randomised(arch: str, seed: int = 0) -> nn.Module:
    """An eval-mode model with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = randomise_batchnorm(build_model(arch).double().eval())
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            module.bias.data.uniform_(-0.2, 0.2)
    return model


def _input(arch: str, batch: int = 2) -> torch.Tensor:
    side = 32 if arch_spec(arch).input_size == 32 else 64
    return torch.randn(batch, 3, side, side, dtype=torch.float64)


def _mask_removed_inputs(model: nn.Module, arch: str, keep: dict) -> nn.Module:
    """Zero every consumer's weights on removed input channels, so removed channels contribute nothing."""
    layout = channel_layout(model, arch)
    widths = layout.widths(model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, groups in layout.inputs.items():
            removed, offset = [], 0
            for group in groups:
                mask = torch.ones(widths[group], dtype=torch.bool)
                mask[keep[group]] = False
                removed.append(torch.nonzero(mask).flatten() + offset)
                offset += widths[group]
            removed_idx = torch.cat(removed)
            module = modules[name]
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight[:, removed_idx] = 0
    return model


@pytest.mark.parametrize("arch", list_models())
def test_rate_zero_gives_back_the_original_outputs(arch):
    original = _randomised(arch)
    slim = prune_model(original, arch, [0.0] * 100)
    x = _input(arch)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), original(x), rtol=0, atol=0)
    for key, value in original.state_dict().items():
        assert torch.equal(slim.state_dict()[key], value), key


@pytest.mark.parametrize("arch", list_models())
def test_slim_model_equals_original_with_removed_channels_masked(arch):
    original = _randomised(arch)
    result = prune(original, arch, SPEC_RATE[arch], "VBD_dis", "min_sum")
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in original.parameters())
    masked = _mask_removed_inputs(original, arch, result.keep)
    x = _input(arch)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), masked(x), rtol=1e-9, atol=1e-9)


FIRST_PRUNED = {  # (module whose output is compared, its channel group)
    "vgg_16_bn": ("features.norm0", "features.conv0"),
    "resnet_56": ("layer1.0.bn1", "layer1.0.mid"),
    "resnet_110": ("layer1.0.bn1", "layer1.0.mid"),
    "densenet_40": ("dense1.0.conv1", "dense1.0"),
    "googlenet": ("inception_a3.branch3x3.4", "inception_a3.branch3x3"),
    "mobilenet_v2": ("features.1.conv.4", "stage1"),
    "resnet_50": ("layer1.0.bn1", "layer1.0.conv1"),
}
PAPER_RATE = {
    "vgg_16_bn": "[0.21]*7+[0.75]*5", "resnet_56": "[0.]+[0.18]*29", "resnet_110": "[0.]+[0.18]*56",
    "densenet_40": "[0.]+[0.08]*6+[0.09]*6+[0.08]*26", "googlenet": "[0.05]+[0.1]*2+[0.32]*5+[0.35]*2",
    "mobilenet_v2": "[0.]+[0.1]+[0.25]*2+[0.25]*2+[0.3]*2", "resnet_50": "[0.]+[0.5]*3+[0.6]*16",
}


def _capture(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    store = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: store.update(out=o.clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return store["out"]


@pytest.mark.parametrize("arch", list_models())
def test_kept_channels_of_an_intermediate_layer_match_at_the_paper_rate(arch):
    original = _randomised(arch)
    result = prune(original, arch, PAPER_RATE[arch], "Euclide_dis", "min_sum")
    module, group = FIRST_PRUNED[arch]
    x = _input(arch)
    full, slim = _capture(original, module, x), _capture(result.model, module, x)
    assert slim.shape[1] == len(result.keep[group]) < full.shape[1]
    torch.testing.assert_close(slim, full[:, result.keep[group]], rtol=1e-10, atol=1e-10)


def test_resnet56_stem_and_stage1_share_one_selection_when_their_widths_agree():
    original = _randomised("resnet_56")
    result = prune(original, "resnet_56", "[0.18]*30", "VBD_dis", "min_sum")
    assert torch.equal(result.keep["stem"], result.keep["layer1.out"])
    masked = _mask_removed_inputs(original, "resnet_56", result.keep)
    x = _input("resnet_56")
    full, slim = _capture(masked, "layer1", x), _capture(result.model, "layer1", x)
    torch.testing.assert_close(slim, full[:, result.keep["layer1.out"]], rtol=1e-9, atol=1e-9)


def test_coupled_residual_stage_keeps_one_selection_for_all_its_convs():
    result = prune(_randomised("resnet_50"), "resnet_50", "[0.]+[0.5]*3+[0.6]*16", "VBD_dis", "min_sum")
    slim = dict(result.model.named_modules())
    assert slim["layer2.0.downsample.0"].out_channels == slim["layer2.3.conv3"].out_channels == 256
    assert len(result.keep["layer2.out"]) == 256


def test_kshot_rounds_are_fractions_of_the_target():
    rounds = shot_rates([0.5, 0.2], 4)
    assert rounds == [[0.125, 0.05], [0.5 / 3, 0.2 / 3], [0.25, 0.1], [0.5, 0.2]]


@pytest.mark.parametrize("arch", ["densenet_40", "googlenet"])
def test_kshot_on_concatenating_archs_transfers_exactly(arch):
    """The paper's K-shot code used offsets of the original widths after the first shot; ours reads them."""
    original = _randomised(arch)
    target = {"densenet_40": "[0.]+[0.3]*38", "googlenet": "[0.]+[0.5]*9"}[arch]
    model, x = original, _input(arch)
    for rates in shot_rates(parse_compress_rate(target), 3):
        result = prune(model, arch, rates, "cosine_sim", "min_sum")
        masked = _mask_removed_inputs(model, arch, result.keep)
        with torch.no_grad():
            torch.testing.assert_close(result.model(x), masked(x), rtol=1e-9, atol=1e-9)
        model = result.model


def test_transfer_rejects_a_layout_that_does_not_fit():
    original = build_model("vgg_16_bn")
    slim = build_model("vgg_16_bn", "[0.5]*12")
    layout = channel_layout(original)
    keep = {g.name: torch.arange(layout.widths(original)[g.name]) for g in layout.groups}  # keeps everything
    with pytest.raises(SurgeryError, match="features.conv0.weight"):
        transfer_weights(original, slim, layout, keep)


def test_linear_after_a_flatten_keeps_every_position_of_the_kept_channels():
    from models.layout import LayoutBuilder

    def net(channels: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.Flatten(), nn.Linear(channels * 4 * 4, 5))

    torch.manual_seed(0)
    original, slim = net(6).double(), net(4).double()
    b = LayoutBuilder()
    b.group("conv", ["0"])
    b.feed("2", "conv")
    keep = {"conv": torch.tensor([0, 2, 3, 5])}
    transfer_weights(original, slim, b.build(), keep)
    with torch.no_grad():  # silence the dropped channels in the original: both must now agree
        original[0].weight[[1, 4]] = 0
        original[0].bias[[1, 4]] = 0
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(slim(x), original(x))
