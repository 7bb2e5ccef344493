"""Every torchvision classification CNN prunes at 30% of its channels with CORING, saves and reloads exactly.

A representative subset runs by default (residual, depthwise + squeeze-excitation, dense concatenation, grouped
convs, inception concatenation, a conv classifier). The whole list takes ~17 minutes on two CPU cores: it runs
with ``CORING_GENERIC_SWEEP=1`` (``bench/generic_sweep.py`` runs the same check and writes docs/generic_models.md).
"""
import os

import pytest
import torch
import torchvision

from coring.generic import (
    NOT_CNN_PREFIXES,
    GenericModelError,
    count_ops,
    load_user_model,
    prune_generic,
    rebuild_from_checkpoint,
    save_generic,
)

FAST = ["resnet18", "mobilenet_v3_small", "densenet121", "efficientnet_b0", "regnet_x_400mf", "googlenet",
        "squeezenet1_0", "mnasnet0_5", "inception_v3"]  # mnasnet: its state dict keeps version metadata
INPUT_SIZE = {"inception_v3": 80}  # its stem needs >= 75 pixels
TRACER_FAILS = ("shufflenet_v2",)  # Torch-Pruning 1.6.1 cannot trace channel_shuffle's 5-D view
ALL = torchvision.models.list_models(module=torchvision.models)
SWEEP = os.environ.get("CORING_GENERIC_SWEEP") == "1"


pytestmark = pytest.mark.usefixtures("one_thread")


def _check_model(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    size = INPUT_SIZE.get(name, 64)
    spec = f"torchvision:{name}"
    model = load_user_model(spec, 10).eval()
    x = torch.randn(2, 3, size, size)
    pruned, record = prune_generic(model, x[:1], channel_ratio=0.3, criterion="VBD_dis", strategy="min_sum")
    pruned.eval()
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (2, 10) and bool(torch.isfinite(out).all())
    assert record["output_layers"], "the classifier must be found and kept"
    assert record["flops_after"] < 0.75 * record["flops_before"]  # 30% of channels: >= 25% of the MACs go
    assert record["params_after"] < record["params_before"]
    changed = {n for n, w in record["widths"].items() if w != record["original_widths"][n]}
    assert set(record["kept"]) == changed  # the surviving filters of every pruned layer are recorded
    path = tmp_path / "pruned.pth.tar"
    save_generic(path, pruned, record, {"source": spec, "num_classes": 10})
    rebuilt = rebuild_from_checkpoint(torch.load(path, weights_only=True)).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)
    assert count_ops(rebuilt, x[:1]) == (record["flops_after"], record["params_after"])


@pytest.mark.parametrize("name", FAST)
def test_torchvision_cnn_prunes_saves_and_reloads(name, tmp_path):
    _check_model(name, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not SWEEP, reason="~17 min on 2 CPU cores: set CORING_GENERIC_SWEEP=1 "
                                      "(results in docs/generic_models.md)")
@pytest.mark.parametrize("name", [n for n in ALL if n not in FAST])
def test_every_torchvision_classification_model(name, tmp_path):
    if name.startswith(NOT_CNN_PREFIXES):
        pytest.skip("not a CNN: attention blocks")
    if name.startswith(TRACER_FAILS):
        with pytest.raises(GenericModelError, match="cannot trace"):
            _check_model(name, tmp_path)
        return
    _check_model(name, tmp_path)


def test_shufflenet_is_a_clear_tracing_error():
    model = load_user_model("torchvision:shufflenet_v2_x0_5", 10)
    with pytest.raises(GenericModelError, match=r"torch-pruning \S+ cannot trace the model") as info:
        prune_generic(model, torch.randn(1, 3, 64, 64), channel_ratio=0.3)
    assert "\n" not in str(info.value)

