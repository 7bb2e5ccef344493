"""Issue 12 (points 1, 5-8) and issue 14 (points 3, 6): bad input fails early, in one line, and safely."""
from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from coring.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, save_checkpoint
from coring.device import resolve_device
from coring.generic import GenericModelError, load_user_model, prune_generic, save_generic
from coring.rebuild import model_from_checkpoint
from coring.report import find_runs
from coring.run_logging import RunLogger, read_metrics
from data import build_loaders
from data.imagenet import CorruptImageError
from main import finetune as finetune_entry
from main import prune as prune_entry
from main import quickstart as quickstart_entry
from main import test as test_entry
from models import build_model
from models.compress import CompressRateError, parse_compress_rate
from tests.test_data import _write_image_folder, write_fake_cifar

pytestmark = pytest.mark.usefixtures("one_thread")

USER_MODEL = textwrap.dedent('''
    from pathlib import Path

    import torch
    from torch import nn

    Path(__file__).with_name("imported.txt").write_text("this file ran")  # the side effect a load must not cause


    class Small(nn.Module):
        def __init__(self, num_classes: int = 10) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


    class HardCoded(nn.Module):
        """Flattens with a literal width: breaks once conv2 loses channels."""

        def __init__(self, num_classes: int = 10) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 16, 3, stride=4, padding=1)
            self.fc = nn.Linear(16 * 8 * 8, num_classes)

        def forward(self, x):
            x = self.conv2(torch.relu(self.conv1(x)))
            return self.fc(x.view(-1, 1024))
''')


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture()
def user_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint pruned from ``Small`` in ``<tmp>/src/net.py``; returns (checkpoint, model file)."""
    source = tmp_path / "src" / "net.py"
    source.parent.mkdir()
    source.write_text(USER_MODEL)
    torch.manual_seed(0)
    model = load_user_model(f"{source}:Small", 10).eval()
    pruned, record = prune_generic(model, torch.randn(1, 3, 32, 32), channel_ratio=0.5, criterion="l1")
    path = tmp_path / "pruned.pth.tar"
    save_generic(path, pruned, record, {"source": f"{source}:Small", "num_classes": 10})
    (source.parent / "imported.txt").unlink()
    return path, source


# ---------------------------------------------------------------------------------------------- 1: no code from a checkpoint
def test_loading_a_user_checkpoint_never_imports_the_file_it_names(user_checkpoint):
    path, source = user_checkpoint
    with pytest.raises(GenericModelError) as info:
        model_from_checkpoint(load_checkpoint(path))
    message = _one_line(str(info.value))
    assert "--model" in message and "Small" in message and str(source) in message  # the recorded path as a hint
    assert not (source.parent / "imported.txt").exists()


def test_test_py_rebuilds_a_user_checkpoint_from_a_moved_file_named_by_model(user_checkpoint, tmp_path, capsys):
    path, source = user_checkpoint
    moved = tmp_path / "elsewhere" / "renamed.py"
    moved.parent.mkdir()
    shutil.move(source, moved)
    common = ["--model_path", str(path), "--dataset", "digits", "--device", "cpu", "--limit_test", "32",
              "--job_dir", str(tmp_path / "logs"), "--no_progress"]
    assert test_entry.main(common) == 2
    assert "--model" in _one_line(capsys.readouterr().err)
    assert test_entry.main(common + ["--model", f"{moved}:Small", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 32


def test_model_naming_another_class_is_refused(user_checkpoint):
    path, source = user_checkpoint
    with pytest.raises(GenericModelError, match="does not match the checkpoint") as info:
        model_from_checkpoint(load_checkpoint(path), model_spec=f"{source}:HardCoded")
    assert "'Small'" in _one_line(str(info.value))
    with pytest.raises(GenericModelError, match="does not match the checkpoint"):
        model_from_checkpoint(load_checkpoint(path), model_spec="torchvision:resnet18")


def test_finetune_passes_model_through_to_the_rebuild(user_checkpoint, tmp_path):
    path, source = user_checkpoint
    args = finetune_entry.make_args(pretrained=str(path), model=f"{source}:Small", dataset="digits", evaluate=True,
                                    device="cpu", limit_test=32, job_dir=str(tmp_path / "ft"), progress=False)
    assert finetune_entry.run_finetune(args)["test_count"] == 32
    without = finetune_entry.make_args(pretrained=str(path), dataset="digits", evaluate=True, device="cpu",
                                       limit_test=32, job_dir=str(tmp_path / "ft2"), progress=False)
    with pytest.raises(GenericModelError, match="--model"):
        finetune_entry.run_finetune(without)


def test_help_says_that_model_executes_the_file():
    for parser in (test_entry.build_parser(), finetune_entry.build_parser(), prune_entry.build_parser()):
        assert "EXECUTES" in " ".join(parser.format_help().split())


def test_a_forward_with_hard_coded_widths_fails_in_one_line_naming_the_layer(tmp_path):
    source = tmp_path / "net.py"
    source.write_text(USER_MODEL)
    model = load_user_model(f"{source}:HardCoded", 10).eval()
    with pytest.raises(GenericModelError) as info:
        prune_generic(model, torch.randn(1, 3, 32, 32), channel_ratio=0.5, criterion="l1")
    message = _one_line(str(info.value))
    assert "HardCoded.forward" in message and "'conv2'" in message and "[1, 8, 8, 8]" in message


# ---------------------------------------------------------------------------------------------- 5: rates
@pytest.mark.parametrize("arch, rate, layer", [
    ("resnet_56", "[0.]+[0.99]*29", "layer1.0.conv2"),
    ("densenet_40", "[0.]+[0.99]*38", "dense1.0.conv1"),       # ZeroDivisionError in the initialiser before
    ("mobilenet_v2", "[0.]+[0.99]*7", "features.1.conv.3"),    # "groups must be a positive integer" before
    ("densenet_40", "[0.]+[0.9]*12+[0.98]+[0.]*25", "trans1.conv1"),  # 36 channels reach it, not 168
])
def test_a_rate_that_empties_a_layer_is_refused_naming_the_layer_and_width(arch, rate, layer):
    with pytest.raises(CompressRateError) as info:
        build_model(arch, rate)
    message = _one_line(str(info.value))
    assert f"'{layer}'" in message and "0 channels" in message and "int(" in message


@pytest.mark.parametrize("text", ["[0.1]*10000000000", "[0.1]*" + "9" * 5000, "[0.1]*99999+[0.2]*2",
                                  "[0.1]*100000000000000000000000"])
def test_a_huge_repeat_count_is_a_compress_rate_error(text):
    with pytest.raises(CompressRateError, match="too large") as info:
        parse_compress_rate(text)
    assert len(_one_line(str(info.value))) < 400


def test_num_classes_below_one_is_refused():
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"num_classes must be a whole number >= 1, got {bad}"):
            build_model("resnet_56", None, bad)


# ---------------------------------------------------------------------------------------------- 6: validate first
def test_quickstart_refuses_a_bad_rate_before_training(tmp_path, capsys):
    job = tmp_path / "qs"
    with pytest.raises(SystemExit) as info:
        quickstart_entry.main(["--compress_rate", "abc", "--job_dir", str(job), "--device", "cpu"])
    assert info.value.code == 2 and "abc" in capsys.readouterr().err
    assert quickstart_entry.main(["--compress_rate", "[0.]+[0.99]*29", "--job_dir", str(job), "--device", "cpu"]) == 2
    assert "'layer1.0.conv2'" in _one_line(capsys.readouterr().err)
    assert quickstart_entry.main(["--device", "foo", "--job_dir", str(job)]) == 2
    assert _one_line(capsys.readouterr().err).startswith("error: --device 'foo'")
    assert not job.exists()  # nothing trained, nothing written


def test_prune_refuses_a_bad_criterion_or_rate_before_reading_the_checkpoint(tmp_path, capsys):
    common = ["--arch", "resnet_56", "--pretrain_dir", str(tmp_path / "absent.pth.tar"), "--dataset", "digits",
              "--job_dir", str(tmp_path / "job"), "--device", "cpu"]
    with pytest.raises(SystemExit):
        prune_entry.main(common + ["--compress_rate", "[0.]+[0.1]*29", "--criterion", "foo"])
    err = capsys.readouterr().err
    assert "'foo'" in err and "VBD_dis" in err
    with pytest.raises(SystemExit):
        prune_entry.main(common + ["--compress_rate", "[0.]+[0.1]*29", "--strategy", "max"])
    assert "'max'" in capsys.readouterr().err
    assert prune_entry.main(common + ["--compress_rate", "[0.]+[0.99]*29"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "'layer1.0.conv2'" in err and "absent" not in err


# ---------------------------------------------------------------------------------------------- 7: one-line errors
def test_a_corrupt_image_is_a_one_line_error_naming_the_file(tmp_path):
    _write_image_folder(tmp_path / "val")
    bad = next((tmp_path / "val").rglob("*.*"))
    bad.write_bytes(b"not an image at all")
    for workers in (0, 1):  # a DataLoader worker re-raises with its traceback: still one line
        loaders = build_loaders("imagenet", str(tmp_path), 2, workers=workers)
        with pytest.raises(CorruptImageError) as info:
            list(loaders.test)
        assert str(bad) in _one_line(str(info.value))


@pytest.mark.parametrize("argv, value", [(["--label_smooth", "2"], "'2'"), (["--num_classes", "-3"], "'-3'"),
                                         (["--num_classes", "0"], "'0'"), (["--batch_size", "0"], "'0'"),
                                         (["--momentum", "-1"], "'-1'")])
def test_out_of_range_numbers_are_refused_when_parsed(argv, value, capsys):
    with pytest.raises(SystemExit) as info:
        finetune_entry.parse_args(argv)
    assert info.value.code == 2 and value in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_bad_device_is_one_line_from_every_entry_point(tmp_path, capsys):
    ckpt = tmp_path / "m.pth"
    torch.save(build_model("resnet_56").state_dict(), ckpt)
    assert test_entry.main(["--arch", "resnet_56", "--model_path", str(ckpt), "--dataset", "digits",
                            "--device", "foo", "--job_dir", str(tmp_path)]) == 2
    assert _one_line(capsys.readouterr().err) == ("error: --device 'foo' is not a device; expected 'auto', 'cpu', "
                                                  "'cuda' or 'cuda:N'")
    assert finetune_entry.main(["--arch", "resnet_56", "--dataset", "digits", "--device", "foo",
                                "--job_dir", str(tmp_path / "ft")]) == 2
    assert _one_line(capsys.readouterr().err).startswith("error: --device 'foo'")


def test_a_cuda_index_past_the_visible_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"--device 'cuda:3': there is no CUDA device 3 \(2 visible"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize("plain_pickle", [False, True])
def test_a_malicious_pickle_says_it_holds_objects_not_allowed_for_safe_loading(tmp_path, plain_pickle):
    path = tmp_path / "evil.pth"
    if plain_pickle:
        path.write_bytes(pickle.dumps({"state_dict": {}, "x": _RunsCode()}, protocol=4))
    else:
        torch.save({"state_dict": {}, "x": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = _one_line(str(info.value))
    assert "not allowed for safe loading" in message and str(path) in message


def test_a_truncated_prune_summary_is_a_warning_naming_it(tmp_path):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "prune_summary.json").write_text('{"arch": "resnet_56", "compress_rate": "[0.]+[0')
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "prune_summary.json").write_text(json.dumps({"arch": "resnet_56", "shot": 1}))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("coring.report")
    logger.addHandler(handler)
    try:
        runs = find_runs(tmp_path / "runs")
    finally:
        logger.removeHandler(handler)
    assert [r.prune_dir.name for r in runs] == ["b"]  # and the report goes on
    assert any(str(run / "prune_summary.json") in r.getMessage() for r in records)


def test_a_torn_last_metrics_row_is_dropped_on_resume_with_a_warning(tmp_path):
    log = RunLogger(tmp_path, "t", console=False)
    try:
        for epoch in range(3):
            log.append_metrics({"epoch": epoch, "train_loss": 1.0, "test_top1": 50.0 + epoch})
        with open(log.metrics_path, "a") as f:
            f.write("3,0.9,51")  # killed mid-row
        with pytest.warns(UserWarning, match="torn last row"):
            kept = log.truncate_metrics(5)
    finally:
        log.close()
    assert kept == 3
    assert [r["epoch"] for r in read_metrics(log.metrics_path)] == ["0", "1", "2"]
    assert "0.9" not in log.metrics_path.read_text()


# ---------------------------------------------------------------------------------------------- 7: the atomic writer
def _assert_untouched(folder: Path, path: Path, before: bytes) -> None:
    assert path.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temporary file left


def test_a_full_disk_names_the_path_and_leaves_the_earlier_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 64:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("coring.checkpoint.os.fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(CheckpointWriteError) as info:  # torch.save wraps the OSError in a RuntimeError
        save_checkpoint({"epoch": 2, "w": torch.zeros(10_000)}, path)
    assert str(path) in _one_line(str(info.value)) and "No space left" in str(info.value)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    _assert_untouched(tmp_path, path, before)


def test_a_read_only_file_system_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("coring.checkpoint.tempfile.mkstemp", read_only)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint({"epoch": 2}, path)
    assert str(path) in _one_line(str(info.value)) and "Read-only" in str(info.value)
    _assert_untouched(tmp_path, path, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_job_dir_names_the_path(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(CheckpointWriteError) as info:
            save_checkpoint({"epoch": 2}, path)
    finally:
        tmp_path.chmod(0o755)
    assert str(path) in _one_line(str(info.value))
    _assert_untouched(tmp_path, path, before)


# ---------------------------------------------------------------------------------------------- 8: test.py
def test_test_py_needs_only_the_cifar_test_batch_and_no_writable_log_dir(tmp_path, capsys):
    write_fake_cifar(tmp_path / "cifar")
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (tmp_path / "cifar" / "cifar-10-batches-py" / name).unlink()
    ckpt = tmp_path / "m.pth"
    torch.save(build_model("resnet_56", "[0.]+[0.5]*29").state_dict(), ckpt)
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("")
    assert test_entry.main(["--arch", "resnet_56", "--compress_rate", "[0.]+[0.5]*29", "--model_path", str(ckpt),
                            "--dataset", "cifar10", "--data_dir", str(tmp_path / "cifar"), "--device", "cpu",
                            "--job_dir", str(not_a_dir), "--no_progress", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["count"] == 7
    assert "warning: cannot write a log" in out.err and "Acc@1" in out.err
