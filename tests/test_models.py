"""Every architecture builds from the paper's rates, with the paper's keys and widths, and runs forward."""
import pytest
import torch
import torchvision

from coring.paper_tables import CORING_ROWS
from models import arch_spec, build_model, channel_layout, list_models

# Every compress rate of the paper's scripts and table rows (docs/reproduce.md), per arch.
SPEC_RATES = {
    "vgg_16_bn": ["[0.05]*7+[0.2]*5", "[0.21]*7+[0.75]*5", "[0.5]*2+[0.65]*5+[0.8]*5", "[0.45]*7+[0.78]*5",
                  "[0.3]*7+[0.75]*5", "[0.1]*7+[0.38]*5", "[0.21]*7+[0.75]*5+[0.]"],
    "resnet_56": ["[0.]+[0.18]*29", "[0.]+[0.12]*2+[0.4]*27", "[0.]+[0.4]*2+[0.5]*9+[0.6]*9+[0.7]*9",
                  "[0.]+[0.15]*2+[0.4]*27"],
    "resnet_110": ["[0.]+[0.18]*56"],
    "densenet_40": ["[0.]+[0.08]*6+[0.09]*6+[0.08]*26", "[0.]+[0.2]*12+[0.]+[0.2]*12+[0.]+[0.2]*12",
                    "[0.]+[0.3]*12+[0.1]+[0.3]*12+[0.1]+[0.3]*12", "[0.]+[0.17]*5+[0.16]*7+[0.18]*1+[0.17]*25",
                    "[0.]+[0.25]*5+[0.28]*8+[0.32]*15+[0.34]*10", "[0.]+[0.4]*12+[0.]+[0.4]*12+[0.]+[0.4]*12"],
    "googlenet": ["[0.05]+[0.1]*2+[0.32]*5+[0.35]*2", "[0.3]+[0.6]*2+[0.7]*5+[0.8]*2",
                  "[0.4]+[0.85]*2+[0.9]*5+[0.9]*2"],
    "mobilenet_v2": ["[0.]+[0.1]+[0.25]*2+[0.25]*2+[0.3]*2", "[0.]+[0.2]+[0.3]*2+[0.4]*2+[0.5]*2",
                     "[0.]+[0.05]+[0.1]*2+[0.15]*2+[0.2]*2", "[0.]+[0.1]+[0.25]*2+[0.25]*2+[0.33]*2",
                     "[0.]+[0.05]+[0.15]*2+[0.2]*2+[0.25]*2", "[0.]+[0.12]+[0.25]*2+[0.36]*2+[0.4]*2"],
    "resnet_50": ["[0.]+[0.1]*3+[0.35]*16", "[0.]+[0.12]*3+[0.38]*16", "[0.]+[0.25]*3+[0.5]*16",
                  "[0.]+[0.5]*3+[0.6]*16"],
}
CASES = [(arch, None) for arch in list_models()] + [(a, r) for a, rs in SPEC_RATES.items() for r in rs]
CASES += [(row.arch, row.compress_rate) for row in CORING_ROWS if (row.arch, row.compress_rate) not in CASES]


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch, rate", CASES, ids=[f"{a}-{r}" for a, r in CASES])
def test_arch_builds_and_runs_forward_without_nan(arch, rate):
    model = build_model(arch, rate).eval()
    side = 32 if arch_spec(arch).input_size == 32 else 64  # ResNet-50 pools adaptively; 64 keeps this fast
    with torch.no_grad():
        out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, arch_spec(arch).num_classes)
    assert torch.isfinite(out).all()
    layout = channel_layout(model)
    modules = dict(model.named_modules())
    for group in layout.groups:
        assert all(name in modules for name in group.producers + group.scored), group.name
    assert all(name in modules for name in layout.inputs)


def test_resnet50_keys_and_shapes_are_torchvisions():
    assert _shapes(build_model("resnet_50")) == _shapes(torchvision.models.resnet50())


def test_vgg_widths_of_paper_command():
    shapes = _shapes(build_model("vgg_16_bn", "[0.21]*7+[0.75]*5"))
    convs = [shapes[f"features.conv{i}.weight"][0] for i in (0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16)]
    assert convs == [50, 50, 101, 101, 202, 202, 202, 128, 128, 128, 128, 128, 512]
    assert shapes["classifier.linear1.weight"] == (512, 512)
    assert shapes["features.norm16.running_mean"] == (512,)
    thirteen = _shapes(build_model("vgg_16_bn", "[0.21]*7+[0.75]*6"))
    assert thirteen["features.conv16.weight"][0] == 128 and thirteen["classifier.linear1.weight"] == (512, 128)


def test_resnet56_widths_of_paper_command():
    s = _shapes(build_model("resnet_56", "[0.]+[0.18]*29"))
    assert s["conv1.weight"] == (16, 3, 3, 3)
    assert s["layer1.0.conv1.weight"] == (13, 16, 3, 3) and s["layer1.0.conv2.weight"] == (13, 13, 3, 3)
    assert s["layer2.0.conv1.weight"] == (26, 13, 3, 3) and s["layer2.0.conv2.weight"] == (26, 26, 3, 3)
    assert s["layer3.0.conv1.weight"] == (52, 26, 3, 3) and s["layer3.8.conv2.weight"] == (64, 52, 3, 3)
    assert s["fc.weight"] == (10, 64)
    assert "linear.weight" in _shapes(build_model("resnet_110"))


def test_densenet_widths_of_paper_command():
    s = _shapes(build_model("densenet_40", "[0.]+[0.08]*6+[0.09]*6+[0.08]*26"))
    assert [s[f"dense1.{i}.conv1.weight"][0] for i in range(12)] == [11] * 6 + [10] * 6
    assert s["trans1.conv1.weight"][:2] == (138, 150)
    assert s["trans2.conv1.weight"][:2] == (248, 270)
    assert s["bn.running_mean"] == (380,) and s["fc.weight"] == (10, 380)


def test_googlenet_widths_of_paper_command():
    s = _shapes(build_model("googlenet", "[0.05]+[0.1]*2+[0.32]*5+[0.35]*2"))
    assert s["inception_a3.branch3x3.3.weight"][0] == 115
    assert s["inception_a3.branch5x5.3.weight"][0] == 28 and s["inception_a3.branch5x5.6.weight"][0] == 28
    assert s["inception_b5.branch3x3.3.weight"][0] == 384
    assert s["inception_b5.branch5x5.3.weight"][0] == 83 and s["inception_b5.branch5x5.6.weight"][:2] == (128, 83)
    assert s["pre_layers.0.weight"] == (192, 3, 3, 3) and s["linear.weight"] == (10, 1024)


def test_mobilenet_v2_widths_of_paper_command():
    s = _shapes(build_model("mobilenet_v2", "[0.]+[0.1]+[0.25]*2+[0.25]*2+[0.3]*2"))
    assert s["features.1.conv.0.weight"] == (32, 1, 3, 3) and s["features.1.conv.3.weight"][:2] == (14, 32)
    assert s["features.2.conv.0.weight"][:2] == (84, 14) and s["features.2.conv.6.weight"][:2] == (18, 84)
    outs = [s[f"features.{i}.conv.{3 if i == 1 else 6}.weight"][0] for i in (1, 3, 6, 10, 13, 16, 17)]
    assert outs == [14, 18, 24, 48, 72, 112, 224]
    assert s["features.18.0.weight"][:2] == (1280, 224) and s["classifier.1.weight"] == (10, 1280)


def test_resnet50_widths_of_paper_command():
    s = _shapes(build_model("resnet_50", "[0.]+[0.5]*3+[0.6]*16"))
    assert s["conv1.weight"][0] == 64
    assert s["layer1.0.conv1.weight"][0] == 25 and s["layer1.0.conv3.weight"][0] == 128
    assert s["layer1.0.downsample.0.weight"][:2] == (128, 64)
    assert s["layer2.0.conv2.weight"][0] == 51 and s["layer2.3.conv3.weight"][0] == 256
    assert s["layer3.0.conv1.weight"][0] == 102 and s["layer3.5.conv3.weight"][0] == 512
    assert s["layer4.0.conv1.weight"][:2] == (204, 512) and s["layer4.2.conv3.weight"][0] == 2048


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="unknown arch 'vgg19'; expected one of densenet_40"):
        build_model("vgg19")
