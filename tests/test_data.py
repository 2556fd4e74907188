"""Datasets, device-side augmentation, determinism, sharding and bad-input errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from atzoo.data import (
    DatasetBundle,
    create_dataset,
    data_root,
    make_eval_loader,
    make_train_loader,
)
from atzoo.data.augment import crop_flip
from atzoo.data.benchmark import loader_throughput
from atzoo.errors import DataError, RegistryError
from atzoo.registry import DATASETS


@pytest.fixture(scope="module")
def cifar10(shared_data: Path) -> DatasetBundle:
    return create_dataset(f"npz:{shared_data / 'cifar10_subset.npz'}")


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return create_dataset("digits")


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def one_line_data_error(build) -> str:
    with pytest.raises(DataError) as info:
        build()
    message = str(info.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- datasets


def test_registered_names() -> None:
    assert {"cifar10", "cifar100", "svhn", "imagenette", "digits"} <= set(DATASETS.names())
    assert "npz" in DATASETS.prefixes()


def test_shared_cifar10_subset_has_documented_shapes(cifar10: DatasetBundle) -> None:
    assert cifar10.train.x.shape == (5438, 3, 32, 32) and cifar10.train.x.dtype == torch.uint8
    assert cifar10.test.x.shape == (1017, 3, 32, 32)
    assert cifar10.train.y.dtype == torch.int64 and cifar10.train.y.shape == (5438,)
    assert cifar10.num_classes == 10 and cifar10.classes[0] == "airplane" and cifar10.classes[9] == "truck"
    counts = torch.bincount(cifar10.train.y, minlength=10)
    assert counts.min() >= 500 and counts.max() <= 580  # README: "about 500-570" per class
    test_counts = torch.bincount(cifar10.test.y, minlength=10)
    assert test_counts.min() >= 87 and test_counts.max() <= 114  # README: 87-114 per class
    assert (cifar10.in_channels, cifar10.image_size, cifar10.crop_padding, cifar10.flip) == (3, 32, 4, True)
    assert all(0.2 < m < 0.6 for m in cifar10.mean)


def test_shared_cifar100_subset_has_documented_shapes(shared_data: Path) -> None:
    bundle = create_dataset(f"npz:{shared_data / 'cifar100_subset.npz'}", test_subset=100)
    assert bundle.train.x.shape == (1117, 3, 32, 32)
    assert bundle.test.x.shape == (100, 3, 32, 32)  # test_subset keeps the first 100 of 916
    assert bundle.num_classes == 100 and len(bundle.classes) == 100


def test_npz_images_are_transposed_not_reshaped(shared_data: Path, cifar10: DatasetBundle) -> None:
    with np.load(shared_data / "cifar10_subset.npz") as raw:
        first = raw["x_test"][0]
        label = int(raw["y_test"][0])
    assert torch.equal(cifar10.test.x[0], torch.from_numpy(first).permute(2, 0, 1))
    assert int(cifar10.test.y[0]) == label


def test_digits_is_embedded_and_split_deterministically(digits: DatasetBundle) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert digits.train.x.shape == (1437, 1, 8, 8) and digits.test.x.shape == (360, 1, 8, 8)
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert (digits.crop_padding, digits.flip) == (1, False)
    # 0..16 scaled to 0..255; the test split is the last 360 images in file order.
    assert int(digits.train.x.max()) == 255
    expected = np.rint(raw.images[1437] * 255 / 16).astype(np.uint8)
    assert np.array_equal(digits.test.x[0, 0].numpy(), expected)
    assert torch.equal(digits.test.y, torch.from_numpy(raw.target[1437:]).long())


def test_subsets_keep_the_first_examples(digits: DatasetBundle) -> None:
    small = create_dataset("digits", train_subset=100, test_subset=7)
    assert len(small.train) == 100 and len(small.test) == 7
    assert torch.equal(small.train.x, digits.train.x[:100])
    assert "train_subset" in one_line_data_error(lambda: create_dataset("digits", train_subset=0))


def test_unknown_dataset_suggests_the_closest() -> None:
    with pytest.raises(RegistryError) as info:
        create_dataset("cifar01")
    assert "Did you mean 'cifar10'?" in str(info.value)
    assert "digits" in str(info.value) and "npz:..." in str(info.value)


# --------------------------------------------------------------------------- offline torchvision data


def test_offline_cifar10_names_the_missing_files(tmp_path: Path) -> None:
    message = one_line_data_error(lambda: create_dataset("cifar10", root=str(tmp_path), download=False))
    assert "cifar-10-batches-py/data_batch_1" in message and "cifar-10-batches-py/test_batch" in message
    assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message
    assert list(tmp_path.iterdir()) == []  # nothing created on a failed lookup


@pytest.mark.parametrize(("name", "expected"), [("svhn", "train_32x32.mat"), ("imagenette", "imagenette2-160/val")])
def test_offline_datasets_use_the_env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                           expected: str) -> None:
    monkeypatch.setenv("ATZOO_DATA", str(tmp_path / "data"))
    assert data_root() == tmp_path / "data"
    message = one_line_data_error(lambda: create_dataset(name, download=False))
    assert expected in message and str(tmp_path / "data") in message


def test_failed_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def no_network(self) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR100, "download", no_network)
    message = one_line_data_error(lambda: create_dataset("cifar100", root=str(tmp_path), download=True))
    assert "could not download cifar100" in message and "name resolution" in message
    assert "cifar-100-python/train" in message


def test_cifar10_folder_in_torchvision_layout_loads_into_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    import torchvision.datasets.cifar

    # Tiny stand-in batches in the official pickle layout; the checksums cannot match them.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = {name: rng.integers(0, 256, (4, 3072), dtype=np.uint8) for name in ["data_batch_1", "test_batch"]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = pixels.get(name, pixels["data_batch_1"])
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": [0, 1, 2, 9]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    bundle = create_dataset("cifar10", root=str(tmp_path), download=False)
    assert bundle.train.x.shape == (20, 3, 32, 32) and bundle.test.x.shape == (4, 3, 32, 32)
    assert torch.equal(bundle.test.x[1].reshape(-1), torch.from_numpy(pixels["test_batch"][1]))  # CHW order kept
    assert bundle.test.y.tolist() == [0, 1, 2, 9] and bundle.classes[9] == "c9" and bundle.num_classes == 10


# --------------------------------------------------------------------------- bad npz files


def write_npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def images(n: int, shape: tuple[int, ...] = (8, 8, 3), dtype: type = np.uint8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, *shape)).astype(dtype)


def full(**changes: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {"x_train": images(6), "y_train": np.arange(6) % 3, "x_test": images(4), "y_test": np.arange(4) % 3}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        (full(x_test=None, y_test=None), "lacks x_test, y_test"),
        ({"pixels": images(3)}, "lacks x_train, y_train, x_test, y_test"),
        ({"image": images(3)}, "lacks label"),
        (full(y_test=np.array([0, 1, 2, 5]), classes=np.array(["a", "b", "c"])), "label 5, outside the 3 names"),
        (full(y_train=np.array([0, 1, -1, 0, 1, 2])), "negative label -1"),
        (full(x_train=images(6, dtype=np.float32)), "must be uint8"),
        (full(x_train=images(6, (8, 8))), "(N, H, W, C) with C = 1 or 3"),
        (full(x_train=images(6, (8, 8, 2))), "(N, H, W, C) with C = 1 or 3"),
        (full(y_train=np.arange(5)), "there are 6 images"),
        (full(y_train=np.linspace(0, 2, 6)), "integer labels"),
        (full(x_test=images(4, (16, 16, 3))), "x_test images are"),
    ],
)
def test_bad_npz_is_a_one_line_data_error(tmp_path: Path, arrays: dict[str, np.ndarray], expected: str) -> None:
    name = write_npz(tmp_path, **arrays)
    assert expected in one_line_data_error(lambda: create_dataset(name))


def test_missing_or_unreadable_npz(tmp_path: Path) -> None:
    assert "not found" in one_line_data_error(lambda: create_dataset(f"npz:{tmp_path / 'nope.npz'}"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    assert "not a readable .npz" in one_line_data_error(lambda: create_dataset(f"npz:{tmp_path / 'junk.npz'}"))
    assert "needs a path" in one_line_data_error(lambda: create_dataset("npz:"))


def test_npz_num_classes_from_labels_and_grayscale_defaults(tmp_path: Path) -> None:
    name = write_npz(tmp_path, **full(x_train=images(6, (8, 8, 1)), x_test=images(4, (8, 8, 1)),
                                      y_test=np.array([0, 1, 7, 2])))
    bundle = create_dataset(name)
    assert bundle.num_classes == 8 and bundle.classes[7] == "7"
    assert (bundle.in_channels, bundle.image_size, bundle.crop_padding, bundle.flip) == (1, 8, 1, False)


def test_image_label_npz_is_training_only(tmp_path: Path) -> None:
    name = write_npz(tmp_path, image=images(10, (32, 32, 3)), label=np.arange(10) % 10)
    bundle = create_dataset(name)
    assert len(bundle.train) == 10 and len(bundle.test) == 0 and bundle.num_classes == 10
    assert (bundle.crop_padding, bundle.flip) == (4, True)
    message = one_line_data_error(lambda: make_eval_loader(bundle, 4, device="cpu"))
    assert "no test examples" in message
    assert make_eval_loader(bundle, 4, device="cpu", split="train").num_examples == 10


# --------------------------------------------------------------------------- augmentation


def reference_crop_flip(image: torch.Tensor, padding: int, row: int, col: int, flip: bool) -> torch.Tensor:
    """One image at a time, the obvious way (the batched gather must agree)."""
    height, width = image.shape[1:]
    crop = F.pad(image, (padding,) * 4)[:, row : row + height, col : col + width]
    return crop.flip(-1) if flip else crop


def test_crop_flip_matches_the_per_image_reference() -> None:
    x = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [4, 4], [2, 0], [0, 4], [1, 3], [2, 2]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = crop_flip(x, 2, offsets, flips)
    for i in range(6):
        assert torch.equal(out[i], reference_crop_flip(x[i], 2, *offsets[i].tolist(), bool(flips[i])))
    assert torch.equal(crop_flip(x, 2, torch.full((6, 2), 2), None), x)  # centred crop, no flip = identity
    assert torch.equal(crop_flip(x, 0, None, torch.ones(6, dtype=torch.bool)), x.flip(-1))


def test_augmented_batches_are_shifted_and_flipped_crops(cifar10: DatasetBundle) -> None:
    loader = make_train_loader(cifar10, 64, device="cpu", seed=3)
    loader.set_epoch(2)
    plan = loader.plan()
    x, y = next(iter(loader))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(y, cifar10.train.y[plan.indices[:64]])
    for i in range(64):
        row, col = plan.offsets[i].tolist()
        source = cifar10.train.x[plan.indices[i]]
        expected = reference_crop_flip(source, 4, row, col, bool(plan.flips[i])).float() / 255
        assert torch.equal(x[i], expected)
    # The draws really vary: both flip states and many distinct shifts in one batch.
    assert 0 < int(plan.flips[:64].sum()) < 64
    assert len({tuple(o) for o in plan.offsets[:64].tolist()}) > 20
    assert int(plan.offsets.min()) == 0 and int(plan.offsets.max()) == 8


def test_unaugmented_batches_are_the_images(digits: DatasetBundle) -> None:
    loader = make_train_loader(digits, 32, device="cpu", seed=0, augment=False)
    x, _ = next(iter(loader))
    assert torch.equal(x, digits.train.x[loader.epoch_indices()[:32]].float() / 255)


def test_same_seed_same_batches_other_epoch_or_seed_differs(digits: DatasetBundle) -> None:
    def first_batches(seed: int, epoch: int) -> torch.Tensor:
        loader = make_train_loader(digits, 100, device="cpu", seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([x for x, _ in list(loader)[:3]])

    state = torch.random.get_rng_state()
    reference = first_batches(0, 1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG belongs to attacks
    torch.manual_seed(12345)  # and the global RNG does not influence the data
    assert torch.equal(first_batches(0, 1), reference)
    assert not torch.equal(first_batches(0, 2), reference)
    assert not torch.equal(first_batches(1, 1), reference)


def test_iter_from_equals_the_tail_of_a_full_epoch(digits: DatasetBundle) -> None:
    loader = make_train_loader(digits, 128, device="cpu", seed=7)
    loader.set_epoch(4)
    full_epoch = list(loader)
    assert len(full_epoch) == len(loader) == 1437 // 128
    resumed = make_train_loader(digits, 128, device="cpu", seed=7)
    resumed.set_epoch(4)
    tail = list(resumed.iter_from(5))
    assert len(tail) == len(full_epoch) - 5
    for (xa, ya), (xb, yb) in zip(full_epoch[5:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert list(loader.iter_from(len(loader))) == []
    with pytest.raises(ValueError):
        loader.iter_from(len(loader) + 1)


# --------------------------------------------------------------------------- sharding


def test_two_ranks_partition_each_epoch(digits: DatasetBundle) -> None:
    ranks = [make_train_loader(digits, 50, device="cpu", seed=0, rank=r, world_size=2, augment=False) for r in (0, 1)]
    for loader in ranks:
        loader.set_epoch(3)
    shards = [loader.epoch_indices() for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 1437 // 100
    assert len(shards[0]) == len(shards[1]) == 14 * 50
    union = torch.cat(shards)
    assert len(set(union.tolist())) == 2 * 14 * 50  # disjoint
    # The loaders yield exactly their shard.
    x, y = collect(ranks[1])
    assert torch.equal(y, digits.train.y[shards[1]])
    assert torch.equal(x, digits.train.x[shards[1]].float() / 255)
    # Global batch i of two ranks = batch i of one process with twice the batch size.
    single = make_train_loader(digits, 100, device="cpu", seed=0, augment=False)
    single.set_epoch(3)
    whole = single.epoch_indices()
    for i in range(len(single)):
        pair = set(shards[0][i * 50 : (i + 1) * 50].tolist()) | set(shards[1][i * 50 : (i + 1) * 50].tolist())
        assert pair == set(whole[i * 100 : (i + 1) * 100].tolist())


def test_without_drop_last_ranks_still_get_equal_batch_counts(digits: DatasetBundle) -> None:
    ranks = [make_train_loader(digits, 100, device="cpu", seed=0, rank=r, world_size=3, drop_last=False)
             for r in range(3)]
    sizes = [[x.shape[0] for x, _ in loader] for loader in ranks]
    assert sizes[0] == sizes[1] == sizes[2] == [100] * 4 + [79]  # 1437 // 3 = 479 per rank
    assert len(set(torch.cat([loader.epoch_indices() for loader in ranks]).tolist())) == 1437


def test_evaluation_visits_every_test_example_once(cifar10: DatasetBundle) -> None:
    loaders = [make_eval_loader(cifar10, 100, device="cpu", rank=r, world_size=3) for r in range(3)]
    assert [ld.num_examples for ld in loaders] == [339, 339, 339]
    assert [ld.start for ld in loaders] == [0, 339, 678]
    parts = [collect(ld) for ld in loaders]
    assert [len(y) for _, y in parts] == [ld.num_examples for ld in loaders]
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    assert torch.equal(y, cifar10.test.y) and torch.equal(x, cifar10.test.x.float() / 255)
    uneven = [make_eval_loader(cifar10, 64, device="cpu", rank=r, world_size=4, limit=1001) for r in range(4)]
    assert [ld.num_examples for ld in uneven] == [251, 250, 250, 250]


def test_eval_loader_on_the_training_split_is_unaugmented(digits: DatasetBundle) -> None:
    loader = make_eval_loader(digits, 256, device="cpu", split="train", limit=1000)
    x, y = collect(loader)
    assert loader.num_examples == 1000 and len(loader) == 4
    assert torch.equal(x, digits.train.x[:1000].float() / 255) and torch.equal(y, digits.train.y[:1000])
    assert "unknown split 'val'" in one_line_data_error(lambda: make_eval_loader(digits, 8, device="cpu", split="val"))


def test_training_set_smaller_than_a_batch_is_an_error() -> None:
    small = create_dataset("digits", train_subset=100)
    message = one_line_data_error(lambda: make_train_loader(small, 64, device="cpu", seed=0, world_size=2))
    assert "fewer than one global batch" in message


# --------------------------------------------------------------------------- DataLoader-backed data


class PatternImages(Dataset):
    """Tiny PIL images standing in for Imagenette files (no download in tests)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        from PIL import Image

        pixels = (np.arange(20 * 20 * 3).reshape(20, 20, 3) * (index + 1) % 256).astype(np.uint8)
        return Image.fromarray(pixels), index % 4


@pytest.fixture(scope="module")
def file_backed() -> DatasetBundle:
    from torchvision import transforms as T

    return DatasetBundle(
        name="patterns", num_classes=4, in_channels=3, image_size=12, classes=list("abcd"),
        mean=(0.5,) * 3, std=(0.25,) * 3, train=PatternImages(21), test=PatternImages(10), crop_padding=0,
        train_transform=T.Compose([T.RandomResizedCrop(12), T.RandomHorizontalFlip(), T.ToTensor()]),
        eval_transform=T.Compose([T.Resize(12), T.ToTensor()]),
    )


def test_file_backed_training_is_deterministic_and_resumable(file_backed: DatasetBundle) -> None:
    loader = make_train_loader(file_backed, 4, device="cpu", seed=1, num_workers=0)
    loader.set_epoch(1)
    torch.manual_seed(0)
    first = list(loader)
    torch.manual_seed(99)  # the transforms' draws come from the plan, not the global RNG
    state = torch.random.get_rng_state()
    second = list(loader)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(first) == 5 and first[0][0].shape == (4, 3, 12, 12)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    tail = list(loader.iter_from(3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[3:], tail)) and len(tail) == 2
    loader.set_epoch(2)
    assert not torch.equal(next(iter(loader))[0], first[0][0])


def test_file_backed_evaluation_covers_every_example(file_backed: DatasetBundle) -> None:
    loaders = [make_eval_loader(file_backed, 3, device="cpu", rank=r, world_size=2, num_workers=0) for r in (0, 1)]
    ys = torch.cat([collect(ld)[1] for ld in loaders])
    assert [ld.num_examples for ld in loaders] == [5, 5]
    assert ys.tolist() == [i % 4 for i in range(10)]


# --------------------------------------------------------------------------- benchmark helper


def test_loader_throughput_reports_both_loaders(digits: DatasetBundle) -> None:
    results = loader_throughput(digits, 64, num_workers=(0,), max_batches=2, warmup=1)
    assert set(results) == {"device_loader", "torchvision_workers_0", "speedup_workers_0"}
    assert all(v > 0 for v in results.values())


# --------------------------------------------------------------------------- NAME=npz:PATH


def test_an_npz_file_stands_in_for_a_registered_dataset(tmp_path: Path) -> None:
    """``cifar10=npz:PATH``: the file's images under the stand-in's name and benchmark threat
    model (CIFAR-10's L-inf 8/255), whatever radius plain ``npz:`` data would get."""
    from atzoo.config import AttackConfig, EvalConfig
    from atzoo.config.threat import ThreatModel
    from atzoo.errors import RegistryError

    source = write_npz(tmp_path, **full())
    bundle = create_dataset(f"digits={source}")
    assert bundle.name == f"digits={source}" and bundle.train.x.shape[0] == 6
    assert bundle.benchmark_eps["linf"] == pytest.approx(32 / 255)  # digits' declared benchmark
    trained_wide = AttackConfig(eps=0.3)
    assert ThreatModel.resolve(EvalConfig(), trained_wide, f"digits={source}").eps == pytest.approx(32 / 255)
    assert ThreatModel.resolve(EvalConfig(), trained_wide, f"cifar10={source}").eps == pytest.approx(8 / 255)
    with pytest.raises(RegistryError, match="unknown dataset 'cifar1'"):
        create_dataset(f"cifar1={source}")
