"""Fashion-MNIST: the idx parser (plain, gzipped, torchvision's layout), its one-line errors, the CIFAR-shaped
tensors, the loaders and an entry point; the real files (Debian's dataset-fashion-mnist) where installed."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from data import DATASETS, DataNotFoundError, build_loaders
from data.fashion_mnist import (
    FASHION_MNIST_DEFAULT_DIR,
    FASHION_MNIST_FILES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_fashion_mnist,
    read_idx,
)
from main import test as test_entry
from models import build_model

REAL_DIR = Path(FASHION_MNIST_DEFAULT_DIR)
HAVE_REAL = all(
    (REAL_DIR / name).is_file() or (REAL_DIR / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES.values()
)
needs_real = pytest.mark.skipif(
    not HAVE_REAL, reason=f"Fashion-MNIST is not installed in {REAL_DIR} (apt-get install dataset-fashion-mnist)"
)


# -- helpers ------------------------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the idx format: magic 0x0000 08 <ndim>, big-endian sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_fake(folder: Path, gz: bool = False, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict:
    """Four tiny idx files in ``folder``; returns the arrays written, by role."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    arrays = {
        "train_images": rng.randint(0, 256, size=(n_train, 28, 28)).astype(np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.randint(0, 256, size=(n_test, 28, 28)).astype(np.uint8),
        "test_labels": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for role, array in arrays.items():
        write_idx(folder / FASHION_MNIST_FILES[role], array, gz)
    return arrays


# -- registry -----------------------------------------------------------------------------------------------------
def test_registry_entry_agrees_with_the_module():
    info = DATASETS["fashion_mnist"]
    assert (info.num_classes, info.image_size) == (10, 32)
    assert info.mean == FASHION_MNIST_MEAN and info.std == FASHION_MNIST_STD


# -- layouts ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("torchvision_layout", [False, True], ids=["flat", "FashionMNIST_raw"])
def test_every_layout_loads_the_same_padded_three_channel_images(tmp_path, gz, torchvision_layout):
    folder = tmp_path / "FashionMNIST" / "raw" if torchvision_layout else tmp_path
    arrays = write_fake(folder, gz=gz)
    train_x, train_y, test_x, test_y = load_fashion_mnist(tmp_path)
    assert train_x.shape == (40, 3, 32, 32) and test_x.shape == (20, 3, 32, 32)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert torch.equal(train_y, torch.from_numpy(arrays["train_labels"].astype(np.int64)))
    assert torch.equal(test_y, torch.from_numpy(arrays["test_labels"].astype(np.int64)))
    # the 28x28 image sits in the middle, the 2-pixel border is zero, the three channels are equal
    for images, source in ((train_x, arrays["train_images"]), (test_x, arrays["test_images"])):
        for channel in range(3):
            assert torch.equal(images[:, channel, 2:30, 2:30], torch.from_numpy(source))
        border = images.clone()
        border[:, :, 2:30, 2:30] = 0
        assert int(border.count_nonzero()) == 0


def test_changed_files_are_read_again(tmp_path):
    write_fake(tmp_path, seed=0)
    first = load_fashion_mnist(tmp_path)[0].clone()
    for path in tmp_path.iterdir():
        path.unlink()
    write_fake(tmp_path, gz=True, seed=1)
    assert not torch.equal(load_fashion_mnist(tmp_path)[0], first)


# -- errors -------------------------------------------------------------------------------------------------------
def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_directory_is_one_line_naming_the_package_and_the_paths(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as error:
        load_fashion_mnist(missing)
    message = _one_line(error)
    assert "apt-get install dataset-fashion-mnist" in message
    assert f"'{missing}'" in message and f"'{missing / 'FashionMNIST' / 'raw'}'" in message


def test_incomplete_folder_names_the_missing_file(tmp_path):
    write_fake(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match="missing t10k-labels-idx1-ubyte") as error:
        load_fashion_mnist(tmp_path)
    _one_line(error)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda raw: raw[:-5], "truncated or corrupt"),
        (lambda raw: raw + b"\0", "truncated or corrupt"),
        (lambda raw: bytes([0, 0, 0x0D, 3]) + raw[4:], "magic number 0x00000d03"),
        (lambda raw: raw[:6], "shorter than its 16-byte header"),
    ],
    ids=["truncated", "trailing_bytes", "float_magic", "short_header"],
)
def test_corrupt_idx_file_is_one_line_naming_it(tmp_path, damage, expected):
    write_fake(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=expected) as error:
        load_fashion_mnist(tmp_path)
    assert f"'{path}'" in _one_line(error)


def test_truncated_gzip_is_one_line_naming_it(tmp_path):
    write_fake(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a valid gzip file") as error:
        load_fashion_mnist(tmp_path)
    assert f"'{path}'" in _one_line(error)


def test_labels_and_images_of_different_counts_or_classes_are_rejected(tmp_path):
    write_fake(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(39, dtype=np.uint8), gz=False)
    with pytest.raises(ValueError, match="40 images but .* 39 labels"):
        load_fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(40, 10, dtype=np.uint8), gz=False)
    with pytest.raises(ValueError, match="label 10, expected 0..9"):
        load_fashion_mnist(tmp_path)


def test_read_idx_wants_the_stated_number_of_dimensions(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(5, dtype=np.uint8), gz=False)
    assert read_idx(path, 1).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="with 3 dimensions"):
        read_idx(path, 3)


# -- loaders and an entry point -------------------------------------------------------------------------------------
def test_build_loaders_limits_each_split_and_normalises(tmp_path):
    write_fake(tmp_path)
    loaders = build_loaders("fashion_mnist", str(tmp_path), 8, limit_train=16, limit_test=10, seed=0)
    assert loaders.info == DATASETS["fashion_mnist"]
    train = [(x, y) for x, y in loaders.train]
    test = [(x, y) for x, y in loaders.test]
    assert sum(len(y) for _, y in train) == 16 and sum(len(y) for _, y in test) == 10
    x, _ = test[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    zero = -FASHION_MNIST_MEAN[0] / FASHION_MNIST_STD[0]  # the padded border, normalised
    assert torch.allclose(x[:, :, 0, :], torch.full_like(x[:, :, 0, :], zero))


def test_test_entry_point_evaluates_on_fashion_mnist(tmp_path, one_thread):
    write_fake(tmp_path / "fm")
    torch.manual_seed(0)
    rate = "[0.]+[0.9]*29"
    path = tmp_path / "model.pth"
    torch.save({"state_dict": build_model("resnet_56", rate, 10).state_dict()}, path)
    argv = ["--dataset", "fashion_mnist", "--data_dir", str(tmp_path / "fm"), "--arch", "resnet_56",
            "--compress_rate", rate, "--model_path", str(path), "--job_dir", str(tmp_path / "logs"),
            "--device", "cpu", "--no_progress", "--batch_size", "10"]
    summary = test_entry.run_test(test_entry.build_parser().parse_args(argv))
    assert summary["count"] == 20 and 0.0 <= summary["top1"] <= 100.0


def test_test_entry_point_reports_missing_fashion_mnist_as_one_error_line(tmp_path, capsys):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": build_model("resnet_56", "[0.]+[0.9]*29", 10).state_dict()}, path)
    argv = ["--dataset", "fashion_mnist", "--data_dir", str(tmp_path / "absent"), "--arch", "resnet_56",
            "--compress_rate", "[0.]+[0.9]*29", "--model_path", str(path), "--job_dir", str(tmp_path / "logs"),
            "--device", "cpu", "--no_progress"]
    assert test_entry.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Fashion-MNIST not found")


# -- the real files ---------------------------------------------------------------------------------------------------
@needs_real
def test_real_files_load_with_cifar_shapes_labels_and_range():
    train_x, train_y, test_x, test_y = load_fashion_mnist()
    assert train_x.shape == (60000, 3, 32, 32) and test_x.shape == (10000, 3, 32, 32)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    for labels, per_class in ((train_y, 6000), (test_y, 1000)):
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), per_class))
    sample = train_x[:2000]
    assert int(sample.max()) == 255 and int(sample[:, :, 2:30, 2:30].float().std()) > 0
    assert torch.equal(sample[:, 0], sample[:, 2])


@needs_real
def test_real_set_statistics_match_the_registered_mean_and_std():
    x = load_fashion_mnist()[0][:, 0].to(torch.float64) / 255.0
    assert x.mean().item() == pytest.approx(FASHION_MNIST_MEAN[0], abs=1e-4)
    assert x.std(unbiased=False).item() == pytest.approx(FASHION_MNIST_STD[0], abs=1e-4)


@needs_real
def test_real_set_through_build_loaders_with_limits():
    loaders = build_loaders("fashion_mnist", None, 50, limit_train=100, limit_test=50)
    x, y = next(iter(loaders.test))
    assert x.shape == (50, 3, 32, 32) and set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) > 1
    assert sum(len(y) for _, y in loaders.train) == 100
