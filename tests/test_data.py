"""Tests of the data package: the embedded digits, CIFAR-10 and ImageNet layouts, the device loader's sharding and
augmentation, and the DataLoader (ImageNet) path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler
from torchvision import transforms as T

import data
from data import DATASETS, DataNotFoundError, build_loaders, dataset_info
from data.cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from data.device_loader import DeviceTensorLoader, random_crop_flip
from data.digits import (
    DIGITS_MEAN,
    DIGITS_STD,
    DIGITS_TEST_SIZE,
    DIGITS_TRAIN_SIZE,
    compute_mean_std,
    digits_split_indices,
    load_digits_split,
)
from data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ShardSampler
from data.synthetic import SYNTHETIC_MEAN, SYNTHETIC_STD

# -- helpers ------------------------------------------------------------------------------------------------------


def id_loader(n: int, **kwargs) -> DeviceTensorLoader:
    """A loader whose labels are the sample indices (images are blank)."""
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    return DeviceTensorLoader(images, torch.arange(n), kwargs.pop("batch_size", 8), **kwargs)


def epoch_ids(loader) -> list[int]:
    return [int(i) for _, y in loader for i in y]


def position_images(n: int) -> torch.Tensor:
    """Images whose channel 0 holds row + 10, channel 1 column + 10, channel 2 is 255: crops can be decoded."""
    rows = torch.arange(32).view(32, 1).expand(32, 32) + 10
    cols = torch.arange(32).view(1, 32).expand(32, 32) + 10
    img = torch.stack([rows, cols, torch.full((32, 32), 255)]).to(torch.uint8)
    return img.expand(n, -1, -1, -1).contiguous()


def decode_crop(out: torch.Tensor, padding: int = 4) -> tuple[int, int, bool]:
    """(top, left, flipped) of a crop of a `position_images` image in its zero-padded version."""
    rows, cols = out[0], out[1]
    inside = cols[16][cols[16] > 0]  # row 16 always lies inside the image (top <= 2 * padding)
    flipped = bool(inside[0] > inside[-1])
    if flipped:
        cols = cols.flip(-1)
    first_row = int((rows[:, 16] > 0).nonzero()[0])
    first_col = int((cols[16, :] > 0).nonzero()[0])
    top = padding - first_row + int(rows[first_row, 16]) - 10
    left = padding - first_col + int(cols[16, first_col]) - 10
    return top, left, flipped


def write_fake_cifar(root, n_train_per_batch: int = 6, n_test: int = 7, bytes_keys: bool = True) -> dict:
    """Write a tiny CIFAR-10 in torchvision's pickle layout under ``root/cifar-10-batches-py``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(1)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train_per_batch
        arr = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        labels = rng.randint(0, 10, size=n).tolist()
        key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
        entry = {key("batch_label"): name, key("data"): arr, key("labels"): labels, key("filenames"): ["x.png"] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (arr, labels)
    return written


# -- registry -----------------------------------------------------------------------------------------------------


def test_registry_constants_agree_with_their_modules():
    assert DATASETS["digits"].mean == DIGITS_MEAN and DATASETS["digits"].std == DIGITS_STD
    assert DATASETS["cifar10"].mean == CIFAR10_MEAN and DATASETS["cifar10"].std == CIFAR10_STD
    assert CIFAR10_MEAN == (0.4914, 0.4822, 0.4465) and CIFAR10_STD == (0.2023, 0.1994, 0.2010)
    for name in ("imagenet", "synthetic_imagenet"):
        assert DATASETS[name].mean == IMAGENET_MEAN and DATASETS[name].std == IMAGENET_STD
        assert DATASETS[name].num_classes == 1000 and DATASETS[name].image_size == 224
    assert DATASETS["synthetic_cifar"].mean == SYNTHETIC_MEAN and DATASETS["synthetic_cifar"].std == SYNTHETIC_STD
    assert all(info.name == name for name, info in DATASETS.items())


def test_unknown_dataset_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="digits, cifar10, imagenet, synthetic_cifar, synthetic_imagenet"):
        dataset_info("cifar100")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_loaders("mnist", None, 8)


def test_size_overrides_are_refused_for_real_data_sets():
    with pytest.raises(ValueError, match="only be set"):
        build_loaders("digits", None, 8, num_classes=3)


# -- digits -------------------------------------------------------------------------------------------------------


def test_digits_are_32x32_rgb_uint8_with_a_fixed_stratified_split():
    train_x, train_y, test_x, test_y = load_digits_split()
    assert train_x.shape == (DIGITS_TRAIN_SIZE, 3, 32, 32) == (1437, 3, 32, 32)
    assert test_x.shape == (DIGITS_TEST_SIZE, 3, 32, 32) == (360, 3, 32, 32)
    assert train_x.dtype == test_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert torch.equal(train_x[:, 0], train_x[:, 1]) and torch.equal(train_x[:, 0], train_x[:, 2])
    assert set(train_y.tolist()) == set(test_y.tolist()) == set(range(10))
    assert int(train_x.max()) == 255 and int(train_x.min()) == 0
    # Stratified: every class has 19.5-20.5 % of its images in the test split.
    counts_test = np.bincount(test_y.numpy(), minlength=10)
    counts_all = counts_test + np.bincount(train_y.numpy(), minlength=10)
    assert np.all(np.abs(counts_test / counts_all - 0.2) < 0.005)
    # The split never changes (pinned fingerprint) and is disjoint.
    train_idx, test_idx = digits_split_indices()
    assert test_idx[:10].tolist() == [3, 7, 13, 19, 36, 38, 43, 48, 53, 55]
    assert int(test_idx.sum()) == 313341
    assert len(np.intersect1d(train_idx, test_idx)) == 0 and len(train_idx) + len(test_idx) == 1797
    # Labels are scikit-learn's, in the split's order.
    from sklearn.datasets import load_digits

    target = load_digits().target
    assert np.array_equal(test_y.numpy(), target[test_idx]) and np.array_equal(train_y.numpy(), target[train_idx])


def test_digits_mean_std_constants_are_those_of_the_train_split():
    mean, std = compute_mean_std(load_digits_split()[0])
    np.testing.assert_allclose(mean, DIGITS_MEAN, atol=1e-4)
    np.testing.assert_allclose(std, DIGITS_STD, atol=1e-4)


def test_digits_test_loader_normalises_with_the_train_statistics():
    loaders = build_loaders("digits", None, 64, eval_batch_size=100)
    _, _, test_x, test_y = load_digits_split()
    images, labels = next(iter(loaders.test))
    mean = torch.tensor(DIGITS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DIGITS_STD).view(1, 3, 1, 1)
    expected = (test_x[:100].float() / 255 - mean) / std
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(labels, test_y[:100])
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert len(loaders.test) == 4 and len(loaders.train) == 23
    assert loaders.info == DATASETS["digits"]


def test_limits_keep_an_evenly_spread_subset():
    loaders = build_loaders("digits", None, 16, limit_train=100, limit_test=50)
    assert sum(len(y) for _, y in loaders.train) == 100
    labels = torch.cat([y for _, y in loaders.test])
    assert len(labels) == 50 and len(set(labels.tolist())) == 10


# -- device loader: sharding and order -----------------------------------------------------------------------------


def test_two_ranks_cover_the_training_set_exactly_once_per_epoch():
    shards = [epoch_ids(id_loader(48, shuffle=True, rank=r, world_size=2, seed=3)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 24
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(48))


def test_uneven_training_shards_are_padded_to_equal_batch_counts():
    loaders = [id_loader(50, batch_size=4, shuffle=True, rank=r, world_size=3) for r in range(3)]
    shards = [epoch_ids(loader) for loader in loaders]
    assert [len(s) for s in shards] == [17, 17, 17] and [len(x) for x in loaders] == [5, 5, 5]
    merged = shards[0] + shards[1] + shards[2]
    assert set(merged) == set(range(50)) and len(merged) - len(set(merged)) == 1


def test_evaluation_shards_partition_the_set_without_duplicates():
    shards = [epoch_ids(id_loader(51, batch_size=4, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(51))
    assert shards[0] == list(range(0, 51, 2)) and shards[1] == list(range(1, 51, 2))
    assert len(id_loader(51, batch_size=4, rank=0, world_size=2)) == 7


def test_ranks_share_one_permutation_per_epoch():
    single = epoch_ids(id_loader(40, shuffle=True, seed=5))
    ranks = [epoch_ids(id_loader(40, shuffle=True, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert single[0::2] == ranks[0] and single[1::2] == ranks[1]


def test_set_epoch_changes_the_order_and_fixes_it():
    loader = id_loader(64, shuffle=True, seed=0)
    loader.set_epoch(0)
    first = epoch_ids(loader)
    loader.set_epoch(1)
    second = epoch_ids(loader)
    loader.set_epoch(0)
    again = epoch_ids(loader)
    assert first != second and first == again and sorted(first) == sorted(second) == list(range(64))
    # Without set_epoch every iteration moves on to the next epoch.
    fresh = id_loader(64, shuffle=True, seed=0)
    assert epoch_ids(fresh) == first and epoch_ids(fresh) == second


def test_drop_last_and_batch_count():
    loader = id_loader(50, batch_size=8, shuffle=True, drop_last=True)
    assert len(loader) == 6 and [len(y) for _, y in loader] == [8] * 6
    loader = id_loader(50, batch_size=8, shuffle=True)
    assert len(loader) == 7 and [len(y) for _, y in loader][-1] == 2


def test_loader_rejects_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        DeviceTensorLoader(torch.zeros(4, 3, 8, 8), torch.arange(4), 2)
    with pytest.raises(ValueError, match="rank"):
        id_loader(4, rank=2, world_size=2)


# -- device loader: augmentation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("top,left,flip", [(0, 0, False), (8, 8, True), (3, 7, False), (4, 4, True), (6, 1, True)])
def test_batched_crop_flip_equals_torchvision_random_crop_and_flip(monkeypatch, top, left, flip):
    gen = torch.Generator().manual_seed(top * 31 + left)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen)
    monkeypatch.setattr(T.RandomCrop, "get_params", staticmethod(lambda img, size: (top, left, 32, 32)))
    reference = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(p=1.0 if flip else 0.0)])
    expected = torch.stack([reference(img) for img in images])
    offsets = torch.tensor([[top, left]] * 3)
    got = random_crop_flip(images, offsets, torch.tensor([flip] * 3), padding=4)
    assert torch.equal(got, expected)


def test_augmentation_offsets_are_uniform_over_0_to_8_and_flips_half():
    n = 4608
    loader = DeviceTensorLoader(
        position_images(n), torch.zeros(n, dtype=torch.int64), 512, mean=(0, 0, 0), std=(1 / 255,) * 3,
        shuffle=True, augment=True, seed=11,
    )
    crops = torch.cat([x for x, _ in loader]).round().to(torch.int64)
    decoded = np.array([decode_crop(c) for c in crops])
    tops, lefts, flips = decoded[:, 0], decoded[:, 1], decoded[:, 2].astype(bool)
    for offsets in (tops, lefts):
        counts = np.bincount(offsets, minlength=9)
        assert len(counts) == 9  # nothing outside 0..8
        expected = n / 9
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 26.1, counts  # chi-square, 8 degrees of freedom, p = 0.001
    assert abs(flips.mean() - 0.5) < 0.03
    assert abs(np.corrcoef(tops, lefts)[0, 1]) < 0.06  # the two axes are independent
    # The decoded parameters reproduce every crop exactly through torchvision's functional ops.
    raw = position_images(1)[0]
    for c, (top, left, flip) in zip(crops[:20], decoded[:20]):
        ref = T.functional.crop(T.functional.pad(raw, [4]), int(top), int(left), 32, 32)
        ref = T.functional.hflip(ref) if flip else ref
        assert torch.equal(c.to(torch.uint8), ref)


def test_augmentation_differs_per_image_epoch_and_rank_but_is_seeded():
    loader = id_loader(16, shuffle=True, augment=True, seed=2)
    off0, flip0 = loader.augmentation_params(0, 16)
    assert len({tuple(o) for o in off0.tolist()}) > 5
    off1, _ = loader.augmentation_params(1, 16)
    other_rank = id_loader(16, shuffle=True, augment=True, seed=2, rank=1, world_size=2)
    assert not torch.equal(off0, off1) and not torch.equal(off0, other_rank.augmentation_params(0, 16)[0])
    again, flip_again = id_loader(16, shuffle=True, augment=True, seed=2).augmentation_params(0, 16)
    assert torch.equal(off0, again) and torch.equal(flip0, flip_again)


def test_training_without_augmentation_yields_the_normalised_images():
    train_x, train_y, _, _ = load_digits_split()
    loaders = build_loaders("digits", None, 1437, train_augment=False)
    order = loaders.train.epoch_indices(0)
    images, labels = next(iter(loaders.train))
    mean = torch.tensor(DIGITS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DIGITS_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(images, (train_x[order].float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)
    assert torch.equal(labels, train_y[order]) and not torch.equal(order, torch.arange(1437))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_channels_last_on_the_device():
    loaders = build_loaders("synthetic_cifar", None, 32, device="cuda")
    images, labels = next(iter(loaders.train))
    assert images.is_cuda and labels.is_cuda
    assert images.is_contiguous(memory_format=torch.channels_last)


# -- CIFAR-10 -----------------------------------------------------------------------------------------------------


def test_missing_cifar10_is_a_one_line_error_naming_the_directory(tmp_path):
    where = tmp_path / "cifar10"
    with pytest.raises(DataNotFoundError) as info:
        build_loaders("cifar10", str(where), 8)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and "\n" not in message
    assert f"'{where}'" in message and "cifar-10-batches-py" in message and "nothing is downloaded" in message


def test_incomplete_cifar10_names_the_missing_files(tmp_path):
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="missing data_batch_3"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_fake_cifar10_in_the_pickle_layout_loads(tmp_path, bytes_keys):
    written = write_fake_cifar(tmp_path, bytes_keys=bytes_keys)
    train_x, train_y, test_x, test_y = load_cifar10(tmp_path)
    assert train_x.shape == (30, 3, 32, 32) and test_x.shape == (7, 3, 32, 32) and train_x.dtype == torch.uint8
    arr, labels = written["test_batch"]
    assert torch.equal(test_x, torch.from_numpy(arr.reshape(-1, 3, 32, 32))) and test_y.tolist() == labels
    assert torch.equal(train_x[6:12], torch.from_numpy(written["data_batch_2"][0].reshape(-1, 3, 32, 32)))
    # Through build_loaders, with data_dir either the root or the batches folder itself.
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):
        loaders = build_loaders("cifar10", str(where), 4, eval_batch_size=7)
        images, got_labels = next(iter(loaders.test))
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(images, (test_x.float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)
        assert got_labels.tolist() == labels and sum(len(y) for _, y in loaders.train) == 30


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path):
    write_fake_cifar(tmp_path)
    class CallsPrint:
        def __reduce__(self):
            return (print, ("an unpickled call",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": CallsPrint()}, f, protocol=2)
    with pytest.raises(ValueError, match="not a CIFAR-10 batch file"):
        load_cifar10(tmp_path)


# -- ImageNet path ------------------------------------------------------------------------------------------------


def _write_image_folder(root, classes: int = 2, per_class: int = 2) -> None:
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.randint(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.JPEG", "JPEG")


def test_missing_imagenet_is_a_one_line_error_naming_the_directory(tmp_path):
    where = tmp_path / "imagenet"
    with pytest.raises(DataNotFoundError) as info:
        build_loaders("imagenet", str(where), 8, workers=0)
    message = str(info.value)
    assert "\n" not in message and f"'{where}'" in message and "val/" in message and "train/" in message


def test_imagenet_evaluation_needs_only_val(tmp_path):
    _write_image_folder(tmp_path / "val")
    loaders = build_loaders("imagenet", str(tmp_path), 3, workers=0)
    batches = list(loaders.test)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 224, 224), (1, 3, 224, 224)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 1, 1]
    loaders.train.set_epoch(0)  # fine before the train side exists
    assert not loaders.train.built
    with pytest.raises(DataNotFoundError, match="no 'train/' folder"):
        iter(loaders.train)


def test_imagenet_train_folder_loads_on_first_use(tmp_path):
    _write_image_folder(tmp_path / "val")
    _write_image_folder(tmp_path / "train", per_class=3)
    loaders = build_loaders("imagenet", str(tmp_path), 4, workers=0)
    assert len(loaders.train) == 2 and loaders.train.built
    assert sorted(int(i) for _, y in loaders.train for i in y) == [0, 0, 0, 1, 1, 1]


def test_synthetic_imagenet_batches_have_imagenet_shapes():
    loaders = build_loaders("synthetic_imagenet", None, 16, eval_batch_size=32, workers=0)
    assert loaders.info.num_classes == 1000 and loaders.info.image_size == 224
    images, labels = next(iter(loaders.train))
    assert images.shape == (16, 3, 224, 224) and images.dtype == torch.float32 and type(images) is torch.Tensor
    assert labels.dtype == torch.int64 and int(labels.max()) < 1000
    assert len(loaders.train) == 4 and len(loaders.test) == 1
    val_images, _ = next(iter(loaders.test))
    assert val_images.shape == (32, 3, 224, 224)
    # Normalised with ImageNet's statistics: uniform noise gives mean ~ (0.5 - m) / s.
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(val_images.mean(dim=(0, 2, 3)), expected, atol=0.05, rtol=0)


def test_synthetic_sets_take_size_and_class_overrides():
    loaders = build_loaders("synthetic_imagenet", None, 8, workers=0, num_classes=7, image_size=48)
    images, labels = next(iter(loaders.train))
    assert images.shape == (8, 3, 48, 48) and int(labels.max()) < 7 and loaders.info.num_classes == 7
    loaders = build_loaders("synthetic_cifar", None, 8, num_classes=3)
    assert set(torch.cat([y for _, y in loaders.test]).tolist()) == {0, 1, 2}


def test_imagenet_path_uses_distributed_sampler_across_ranks():
    seen = []
    for rank in range(2):
        loaders = build_loaders(
            "synthetic_imagenet", None, 8, workers=0, seed=4, rank=rank, world_size=2, image_size=32, num_classes=100
        )
        sampler = loaders.train.sampler
        assert isinstance(sampler, DistributedSampler)
        assert (sampler.rank, sampler.num_replicas, sampler.seed, sampler.shuffle) == (rank, 2, 4, True)
        loaders.train.set_epoch(0)
        epoch0 = [int(i) for _, y in loaders.train for i in y]
        loaders.train.set_epoch(1)
        epoch1 = [int(i) for _, y in loaders.train for i in y]
        assert sampler.epoch == 1 and epoch0 != epoch1
        assert len(loaders.train) == 4 and len(epoch0) == 32
        seen.append(epoch0)
        assert isinstance(loaders.test.sampler, ShardSampler)
        assert len([i for _, y in loaders.test for i in y]) == 16
    # Synthetic labels are distinct (64 images, 100 classes), so they identify the images.
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 64


def test_single_process_imagenet_order_is_seeded_per_epoch():
    def order(seed: int, epoch: int) -> list[int]:
        loaders = build_loaders("synthetic_imagenet", None, 64, workers=0, seed=seed, image_size=16, num_classes=64)
        loaders.train.set_epoch(epoch)
        return next(iter(loaders.train))[1].tolist()

    assert order(0, 0) == order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_spread_indices_span_the_range():
    assert data.spread_indices(10, 5).tolist() == [0, 2, 4, 6, 8]
    assert data.spread_indices(3, 5).tolist() == [0, 1, 2]


def test_synthetic_content_is_fixed_whatever_the_training_seed():
    a = build_loaders("synthetic_cifar", None, 256, seed=0, train_augment=False)
    b = build_loaders("synthetic_cifar", None, 256, seed=9, train_augment=False)
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a.test, b.test))
    images, labels = next(iter(a.test))
    assert images.shape == (256, 3, 32, 32) and sorted(set(labels.tolist())) == list(range(10))
    # The classes are learnable: nearest class mean of the training images classifies the test set.
    train_images, train_labels = next(iter(a.train))
    centers = torch.stack([train_images[train_labels == c].mean(0) for c in range(10)]).flatten(1)
    predicted = torch.cdist(images.flatten(1), centers).argmin(1)
    assert (predicted == labels).float().mean() > 0.9
