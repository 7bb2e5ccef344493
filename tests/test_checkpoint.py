"""Tests of main/checkpoint.py: every checkpoint format the paper's code wrote loads, strictly and safely, and
saving is atomic (docs/design.md, "Checkpoints and job directories")."""

from __future__ import annotations

import argparse
import io
import os
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from coring import checkpoint as ckpt
from coring.checkpoint import (
    CheckpointError,
    checkpoint_metadata,
    extract_state_dict,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


class TinyNet(nn.Module):
    """conv-BN-ReLU, pooled, linear: the tensors a paper model holds (conv weight, BN buffers, classifier)."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn1(self.conv1(x))).mean(dim=(2, 3)))


def trained_net(seed: int = 0, width: int = 4) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(width)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    net.bn1.running_var.abs_()
    net.bn1.num_batches_tracked.fill_(7)
    return net


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def add_thop_buffers(model: nn.Module) -> None:
    """What thop.profile leaves behind: float64 [1] buffers on every module."""
    for m in model.modules():
        m.register_buffer("total_ops", torch.zeros(1, dtype=torch.float64))
        m.register_buffer("total_params", torch.zeros(1, dtype=torch.float64))


def paper_dict(net: nn.Module, best) -> dict:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-3)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    return {"state_dict": net.state_dict(), "epoch": 12, "best_top1_acc": best, "optimizer": opt.state_dict()}


def as_numpy1_file(obj: dict, path) -> None:
    """Save ``obj`` as numpy 1.x would have: its pickles name ``numpy.core.multiarray`` (not ``numpy._core``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            payload = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in payload
                payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info.filename, payload)


# -- formats ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "best", [torch.tensor(93.26), np.float64(93.26), np.float32(93.26), 93.26], ids=["tensor", "np64", "np32", "float"]
)
def test_paper_checkpoint_dict_loads_with_its_metadata(tmp_path, best):
    src = trained_net(0)
    torch.save(paper_dict(src, best), tmp_path / "checkpoint.pth.tar")
    dst = TinyNet()
    meta = load_weights(dst, tmp_path / "checkpoint.pth.tar")
    assert_same_weights(src, dst)
    assert meta["epoch"] == 12 and meta["best_top1_acc"] == pytest.approx(93.26, abs=1e-4)
    assert isinstance(meta["best_top1_acc"], float) and "optimizer" not in meta and "state_dict" not in meta


def test_checkpoint_written_by_numpy_1_loads(tmp_path):
    src = trained_net(1)
    path = tmp_path / "old.pth.tar"
    as_numpy1_file({"state_dict": src.state_dict(), "epoch": 3, "best_top1_acc": np.float64(91.5),
                    "rank": np.arange(4)}, path)
    obj = load_checkpoint(path)
    assert isinstance(obj["best_top1_acc"], np.floating) and obj["rank"].tolist() == [0, 1, 2, 3]
    dst = TinyNet()
    assert load_weights(dst, obj)["best_top1_acc"] == 91.5
    assert_same_weights(src, dst)


def test_bare_state_dict_loads_without_metadata(tmp_path):
    src = trained_net(2)
    torch.save(src.state_dict(), tmp_path / "resnet_56.pt")
    dst = TinyNet()
    assert load_weights(dst, tmp_path / "resnet_56.pt") == {}
    assert_same_weights(src, dst)


def test_dataparallel_prefix_and_thop_buffers_are_removed(tmp_path):
    src = trained_net(3)
    wrapped = nn.DataParallel(src)
    add_thop_buffers(wrapped)
    state = wrapped.state_dict()
    assert "module.conv1.weight" in state and "module.conv1.total_ops" in state and "total_params" in state
    torch.save({"state_dict": state, "epoch": 0, "best_top1_acc": torch.tensor(10.0)}, tmp_path / "dp.pth.tar")
    dst = TinyNet()
    load_weights(dst, tmp_path / "dp.pth.tar")
    for k, v in dst.state_dict().items():
        assert torch.equal(v, state["module." + k]), k
    assert set(extract_state_dict(torch.load(tmp_path / "dp.pth.tar"))) == set(dst.state_dict())


def test_torchvision_reference_checkpoint_with_model_key_and_args_loads(tmp_path):
    src = trained_net(4)
    args = argparse.Namespace(lr=0.1, epochs=90, model="tiny")
    torch.save({"model": src.state_dict(), "epoch": 89, "args": args, "optimizer": {}}, tmp_path / "ref.pth")
    dst = TinyNet()
    meta = load_weights(dst, tmp_path / "ref.pth")
    assert meta["epoch"] == 89 and meta["args"].lr == 0.1
    assert_same_weights(src, dst)


def test_wrapped_target_model_loads_into_its_module():
    src = trained_net(5)
    dst = nn.DataParallel(TinyNet())
    load_weights(dst, {"state_dict": src.state_dict()})
    assert_same_weights(src, dst.module)


def test_prefix_is_kept_when_not_every_key_carries_it():
    state = {"module.weight": torch.ones(1), "head.weight": torch.zeros(1)}
    assert set(extract_state_dict(state)) == {"module.weight", "head.weight"}
    nested = {"module.module.a": torch.ones(1), "module.module.b": torch.ones(1)}
    assert set(extract_state_dict({"state_dict": nested})) == {"a", "b"}


def test_missing_num_batches_tracked_is_tolerated():
    src = trained_net(6)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = TinyNet()
    load_weights(dst, state)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


# -- strictness ---------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_the_first_bad_key_and_both_shapes_and_loads_nothing():
    pruned = trained_net(7, width=3)
    dst = TinyNet(width=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(dst, {"state_dict": pruned.state_dict(), "epoch": 1})
    assert str(info.value) == (
        "checkpoint does not fit the model: 'conv1.weight' has shape [3, 3, 3, 3] in the checkpoint but "
        "[4, 3, 3, 3] in the model (is --compress_rate right?)"
    )
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was partially loaded"


def test_a_later_mismatch_leaves_earlier_tensors_untouched():
    src = trained_net(8)
    state = dict(src.state_dict())
    state["fc.weight"] = torch.zeros(5, 4)
    dst = TinyNet()
    before = dst.conv1.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"'fc.weight' has shape \[5, 4\] in the checkpoint but \[3, 4\]"):
        load_weights(dst, state)
    assert torch.equal(dst.conv1.weight, before)


def test_missing_key_is_named():
    state = dict(trained_net(9).state_dict())
    del state["bn1.running_var"]
    with pytest.raises(CheckpointError, match=r"'bn1.running_var' \(shape \[4\] in the model\) is missing .*1 missing"):
        load_weights(TinyNet(), state)


def test_unexpected_key_is_named():
    state = dict(trained_net(10).state_dict())
    state["classifier.weight"] = torch.zeros(3, 4)
    with pytest.raises(CheckpointError, match=r"'classifier.weight' \(shape \[3, 4\] in the checkpoint\) is not in"):
        load_weights(TinyNet(), state)


def test_a_dict_without_weights_is_refused():
    with pytest.raises(CheckpointError, match="no 'state_dict' or 'model' entry"):
        extract_state_dict({"epoch": 3, "best_top1_acc": 1.0})
    with pytest.raises(CheckpointError, match="not a tensor"):
        extract_state_dict({"state_dict": {"w": 3}})


# -- safe loading -------------------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint not found: '{tmp_path / 'nope.pth'}'"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(TinyNet(), str(tmp_path / "nope.pth"))


UNPICKLED = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (_record_unpickling, ("ran",))


def test_file_refused_by_weights_only_is_an_error_never_an_unsafe_load(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": TinyNet().state_dict(), "hook": RunsCodeWhenUnpickled()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only=True" in message and "_record_unpickling" in message
    assert UNPICKLED == []


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "text"])
def test_corrupt_file_is_a_one_line_error(tmp_path, damage):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(TinyNet().state_dict(), path)
    payload = {"truncated": path.read_bytes()[:100], "random": bytes(np.random.RandomState(0).bytes(300)),
               "empty": b"", "text": b"hello world\n"}[damage]
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="is not a readable checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)


def test_metadata_of_each_format():
    assert checkpoint_metadata(TinyNet().state_dict()) == {}
    meta = checkpoint_metadata(
        {"state_dict": {}, "epoch": torch.tensor(4), "best_top1_acc": np.float32(1.5), "optimizer": {}, "arch": "x"}
    )
    assert meta == {"epoch": 4, "best_top1_acc": 1.5, "arch": "x"}


# -- atomic save --------------------------------------------------------------------------------------------------


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "run" / "checkpoint.pth.tar"
    net = trained_net(11)
    save_checkpoint({"state_dict": net.state_dict(), "epoch": 0, "best_top1_acc": 50.0}, path)
    save_checkpoint({"state_dict": net.state_dict(), "epoch": 1, "best_top1_acc": 60.0}, path)
    assert os.listdir(path.parent) == ["checkpoint.pth.tar"]
    assert load_checkpoint(path)["epoch"] == 1
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_interrupted_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint({"state_dict": trained_net(12).state_dict(), "epoch": 5}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"state_dict": {}, "epoch": 6, "bad": lambda: None}, path)  # pickling fails midway
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pth.tar"]


def test_interrupted_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model_best.pth.tar"
    save_checkpoint({"epoch": 1, "state_dict": {}}, path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "state_dict": {}}, path)
    assert load_checkpoint(path)["epoch"] == 1 and os.listdir(tmp_path) == ["model_best.pth.tar"]
