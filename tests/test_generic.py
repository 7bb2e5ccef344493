"""Generic CORING pruning through Torch-Pruning: specs, targets, save/rebuild, the built-in path, the CLI."""
import textwrap
from pathlib import Path

import pytest
import torch

from coring.generic import (
    GenericModelError,
    count_ops,
    load_state_strict,
    load_user_model,
    prune_generic,
    rebuild_from_checkpoint,
    save_generic,
)
from coring.pruning import prune
from models import build_model
from models.vgg import CONV_POSITIONS
from tests.helpers import randomise_batchnorm

USER_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        """Residual stage, depthwise block, concatenation and a linear head."""

        def __init__(self, num_classes: int = 10) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                     nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
            self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False),
                                    nn.BatchNorm2d(32), nn.ReLU())
            self.left = nn.Conv2d(32, 24, 1)
            self.right = nn.Conv2d(32, 8, 3, padding=1)
            self.fc = nn.Linear(32, num_classes)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.res(x))
            x = self.dw(self.expand(x))
            x = torch.cat([self.left(x), self.right(x)], dim=1)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
''')


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_net.py"
    path.write_text(USER_MODEL)
    return path


# ---------------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize("spec, message", [
    ("resnet18", "bad --model 'resnet18': expected 'torchvision:NAME' or 'path/to/file.py:ClassName'"),
    ("torchvision:", "bad --model"),
    ("torchvision:resnet_18", "unknown torchvision classification model 'resnet_18'"),
    ("no/such/file.py:Net", "model file not found: 'no/such/file.py'"),
])
def test_bad_spec_is_a_one_line_error(spec, message):
    with pytest.raises(GenericModelError) as info:
        load_user_model(spec, 10)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_class_and_broken_file_are_one_line_errors(user_file, tmp_path):
    with pytest.raises(GenericModelError, match=r"has no class 'Nope' \(nn.Module classes there: TinyNet\)"):
        load_user_model(f"{user_file}:Nope", 10)
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\ndef oops(:\n")
    with pytest.raises(GenericModelError, match="cannot import .*SyntaxError") as info:
        load_user_model(f"{broken}:Net", 10)
    assert "\n" not in str(info.value)


def test_cli_reports_a_bad_spec_in_one_line(capsys, tmp_path):
    from main.prune import main

    assert main(["--model", "torchvision:nope", "--flops_target", "0.5", "--dataset", "digits",
                 "--job_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown torchvision classification model 'nope'")
    assert "\n" not in err


def test_user_class_gets_num_classes_when_it_accepts_it(user_file):
    model = load_user_model(f"{user_file}:TinyNet", 7)
    assert model.fc.out_features == 7


# ---------------------------------------------------------------------------------------------- user module
def test_user_module_prunes_to_a_flop_target_saves_and_reloads(user_file, tmp_path):
    torch.manual_seed(0)
    spec = f"{user_file}:TinyNet"
    model = randomise_batchnorm(load_user_model(spec, 10)).eval()
    x = torch.randn(2, 3, 32, 32)
    pruned, record = prune_generic(model, x[:1], flops_target=0.4, criterion="Euclide_dis")
    assert record["flops_after"] <= 0.6 * record["flops_before"]
    assert record["output_layers"] == ["fc"] and pruned.fc.out_features == 10
    assert pruned.dw[0].groups == pruned.dw[0].in_channels == pruned.dw[0].out_channels  # still depthwise
    assert model.stem[0].out_channels == 16  # the caller's model is untouched
    kept = record["kept"]
    changed = {n for n, w in record["widths"].items() if w != record["original_widths"][n]}
    assert set(kept) == changed and "fc" not in changed
    assert kept["dw.0"] == kept["expand.0"]  # the depthwise conv follows the conv that feeds it
    columns = kept["left"] + [24 + c for c in kept["right"]]  # the concatenation's slices
    assert torch.equal(pruned.fc.weight, model.fc.weight[:, columns])
    assert torch.equal(pruned.left.weight, model.left.weight[kept["left"]][:, kept["dw.0"]])
    path = tmp_path / "pruned.pth.tar"
    save_generic(path, pruned.eval(), record, {"source": spec, "num_classes": 10})
    checkpoint = torch.load(path, weights_only=True)
    rebuilt = rebuild_from_checkpoint(checkpoint, spec).eval()  # a user module is rebuilt only from --model
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))
    assert count_ops(rebuilt, x[:1]) == (record["flops_after"], record["params_after"])


def test_params_target_is_met(user_file):
    model = load_user_model(f"{user_file}:TinyNet", 10).eval()
    _, record = prune_generic(model, torch.randn(1, 3, 32, 32), params_target=0.3, criterion="l1")
    assert record["params_after"] <= 0.7 * record["params_before"]
    # the smallest ratio on the search grid: one step less would miss the target
    smaller, _ = prune_generic(model, torch.randn(1, 3, 32, 32), channel_ratio=record["channel_ratio"] - 0.01,
                               criterion="l1")
    assert count_ops(smaller, torch.randn(1, 3, 32, 32))[1] > 0.7 * record["params_before"]


def test_exactly_one_target(user_file):
    model = load_user_model(f"{user_file}:TinyNet", 10)
    with pytest.raises(GenericModelError, match="exactly one"):
        prune_generic(model, torch.randn(1, 3, 32, 32), flops_target=0.5, channel_ratio=0.3)
    with pytest.raises(GenericModelError, match="out of reach"):
        prune_generic(model, torch.randn(1, 3, 32, 32), flops_target=0.999, criterion="l2", search_resolution=0.3)


def test_rate_zero_gives_back_the_original(user_file):
    torch.manual_seed(1)
    model = randomise_batchnorm(load_user_model(f"{user_file}:TinyNet", 10)).eval()
    x = torch.randn(2, 3, 32, 32)
    pruned, record = prune_generic(model, x[:1], channel_ratio=0.0)
    assert record["history"] == []
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


def test_iterative_steps_reach_the_same_widths(user_file):
    torch.manual_seed(2)
    model = load_user_model(f"{user_file}:TinyNet", 10).eval()
    x = torch.randn(1, 3, 32, 32)
    _, one = prune_generic(model, x, channel_ratio=0.5)
    _, three = prune_generic(model, x, channel_ratio=0.5, iterative_steps=3)
    assert one["widths"] == three["widths"]
    assert len(three["history"]) > len(one["history"])


# ---------------------------------------------------------------------------------------------- built-in path
VGG_RATES = [0.21] * 7 + [0.75] * 5


@pytest.mark.parametrize("criterion, strategy", [("VBD_dis", "min_sum"), ("cosine_sim", "min_min"),
                                                 ("Euclide_dis", "sum"), ("l1", "min_sum"), ("random", "min_sum")])
def test_vgg16_generic_and_builtin_paths_keep_the_same_filters(criterion, strategy):
    """Per-layer rates through Torch-Pruning select what ``main.prune.prune`` selects.

    CORING ranks a conv on its own filters, whose input dimension shrinks when the previous layer is pruned.
    The built-in path ranks every layer on the original weights; so does Torch-Pruning's one-shot step, which
    computes the importance of every group before it prunes any. Pruning layer by layer would not match.
    """
    torch.manual_seed(3)
    model = randomise_batchnorm(build_model("vgg_16_bn")).eval()
    builtin = prune(model, "vgg_16_bn", VGG_RATES, criterion, strategy)
    layers = {f"features.conv{pos}": rate for pos, rate in zip(CONV_POSITIONS, VGG_RATES)}
    x = torch.randn(2, 3, 32, 32)
    pruned, record = prune_generic(model, x[:1], channel_ratio=layers, criterion=criterion, strategy=strategy)
    kept = record["kept"]
    assert sorted(kept) == sorted(layers)
    for name in layers:
        assert kept[name] == builtin.keep[name].tolist(), name
    last = getattr(pruned.features, f"conv{CONV_POSITIONS[-1]}")
    assert last.out_channels == 512  # the 13th conv keeps its filters, as in the paper
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), builtin.model.eval()(x), rtol=1e-5, atol=1e-5)


def test_vgg16_layer_by_layer_ranking_would_differ():
    """The check above has teeth: ranking conv k after conv k-1 lost input channels changes the kept set."""
    from coring.rank import filter_saliency, select_from_saliency

    torch.manual_seed(3)
    model = build_model("vgg_16_bn")
    conv0, conv3 = model.features.conv0, model.features.conv3
    original = select_from_saliency(filter_saliency(conv3.weight), 50)
    kept0 = select_from_saliency(filter_saliency(conv0.weight), 50)
    shrunk = select_from_saliency(filter_saliency(conv3.weight[:, kept0]), 50)
    assert not torch.equal(original, shrunk)


# ---------------------------------------------------------------------------------------------- command line
@pytest.mark.slow
def test_cli_prunes_then_finetune_and_test_rebuild_the_checkpoint(user_file, tmp_path, capsys):
    """prune.py --model writes pruned.pth.tar; finetune.py and test.py read it through model_from_checkpoint."""
    from main import finetune
    from main import prune as prune_cli
    from main import test as test_cli

    job = tmp_path / "prune"
    assert prune_cli.main(["--model", f"{user_file}:TinyNet", "--flops_target", "0.3", "--dataset", "digits",
                           "--job_dir", str(job), "--device", "cpu", "--bn_recalib", "64", "--limit_test", "64",
                           "--criterion", "VBD_dis"]) == 0
    out = capsys.readouterr()
    assert "conv_linear" in out.out + out.err
    ckpt = job / "pruned.pth.tar"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["generic"]["source"].endswith("tiny_net.py:TinyNet") and saved["arch"] == "generic_TinyNet"
    assert test_cli.main(["--model_path", str(ckpt), "--model", f"{user_file}:TinyNet", "--dataset", "digits",
                          "--device", "cpu", "--limit_test", "64",
                          "--job_dir", str(tmp_path / "test"), "--no_progress"]) == 0
    summary = finetune.run_finetune(finetune.make_args(
        pretrained=str(ckpt), model=f"{user_file}:TinyNet", dataset="digits", epochs=1, batch_size=64,
        job_dir=str(tmp_path / "ft"), device="cpu", limit_train=128, limit_test=64, progress=False, lr_type="cos", warmup_epochs=0))
    assert summary["final_top1"] is not None
    resumed = torch.load(tmp_path / "ft" / "model_best.pth.tar", weights_only=True)
    assert resumed["generic"] == saved["generic"]  # fine-tuned checkpoints rebuild too
    assert test_cli.main(["--model_path", str(tmp_path / "ft" / "model_best.pth.tar"), "--model",
                          f"{user_file}:TinyNet", "--dataset", "digits",
                          "--device", "cpu", "--limit_test", "64", "--job_dir", str(tmp_path / "test2"),
                          "--no_progress"]) == 0


def test_cli_loads_pretrained_weights_strictly(user_file, tmp_path, capsys):
    from main.prune import main

    spec = f"{user_file}:TinyNet"
    torch.manual_seed(4)
    weights = randomise_batchnorm(load_user_model(spec, 10))
    torch.save({"state_dict": weights.state_dict(), "epoch": 3}, tmp_path / "base.pth.tar")
    common = ["--model", spec, "--compress_rate", "0.25", "--dataset", "digits", "--device", "cpu",
              "--bn_recalib", "32", "--limit_test", "32", "--skip_baseline_eval"]
    assert main(common + ["--pretrain_dir", str(tmp_path / "base.pth.tar"), "--job_dir", str(tmp_path / "a")]) == 0
    saved = torch.load(tmp_path / "a" / "pruned.pth.tar", weights_only=True)
    assert saved["generic"]["channel_ratio"] == 0.25
    kept = saved["generic"]["kept"]["stem.0"]
    assert kept == saved["generic"]["kept"]["res.3"]  # coupled by the residual add
    assert torch.equal(saved["state_dict"]["stem.0.weight"], weights.stem[0].weight[kept])
    torch.save(load_user_model(spec, 7).state_dict(), tmp_path / "other.pth")
    capsys.readouterr()
    assert main(common + ["--pretrain_dir", str(tmp_path / "other.pth"), "--job_dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint does not fit the model: 'fc.weight'") and "\n" not in err


def test_plain_state_dicts_load_into_versioned_modules():
    """A bare dict has no ``_metadata``; MNASNet's loader needs its version, taken from the model then."""
    source = load_user_model("torchvision:mnasnet0_5", 10)
    target = load_user_model("torchvision:mnasnet0_5", 10)
    load_state_strict(target, {k: v.clone() for k, v in source.state_dict().items()})
    assert torch.equal(target.classifier[1].weight, source.classifier[1].weight)
    with pytest.raises(GenericModelError, match=r"'layers.0.weight' has shape \[1\] in the checkpoint"):
        load_state_strict(target, {**source.state_dict(), "layers.0.weight": torch.zeros(1)})
