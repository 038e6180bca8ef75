"""MNIST, Fashion-MNIST and CIFAR-10 datamodules read small real-format files; offline errors guide users."""

from __future__ import annotations

import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import pytest
import torch
from fakedata import CIFAR10_CLASSES, write_cifar10, write_mnist
from torchvision import datasets

from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.torchvision_sets import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule

MNIST_STATS = {"mean": [0.1307], "std": [0.3081]}
MNIST_URL, FASHION_URL, CIFAR_URL = (
    datasets.MNIST.mirrors[0],
    datasets.FashionMNIST.mirrors[0],
    datasets.CIFAR10.url,
)


def mnist(root: Path, **kwargs: object) -> MNISTDataModule:
    options = {"root": root, "batch_size": 8, "val_fraction": 0.2, "download": False, **MNIST_STATS, **kwargs}
    return MNISTDataModule(**options)  # type: ignore[arg-type]


def ready(dm: MNISTDataModule | CIFAR10DataModule) -> MNISTDataModule | CIFAR10DataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("compress", [False, True], ids=["ubyte", "gz"])
def test_mnist_reads_idx_files(tmp_path: Path, compress: bool) -> None:
    write_mnist(tmp_path, n_train=50, n_test=20, compress=compress)
    dm = ready(mnist(tmp_path))
    assert dm.class_names == datasets.MNIST.classes
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 20)
    image, label = dm.load_split("train")[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and 0 <= int(label) < 10
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 10
    lo, hi = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    assert images.min() >= lo - 1e-5 and images.max() <= hi + 1e-5 and images.max() > 2.0
    if compress:  # unpacked once, beside the archives
        assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_fashion_mnist_reads_its_own_folder(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=30, n_test=10, fashion=True)
    dm = ready(FashionMNISTDataModule(root=tmp_path, download=False, mean=[0.286], std=[0.353]))
    assert dm.class_names[0] == "T-shirt/top" and dm.class_names == datasets.FashionMNIST.classes
    assert len(dm.test_set) == 10 and (dm.in_channels, dm.image_size, dm.num_classes) == (1, 28, 10)


def test_split_is_seeded_and_deterministic(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=50, n_test=10)
    first, second, other = (ready(mnist(tmp_path, seed=s)) for s in (3, 3, 4))
    assert first.val_set.source.indices == second.val_set.source.indices
    assert first.val_set.source.indices != other.val_set.source.indices
    assert sorted(first.val_set.source.indices + first.train_set.source.indices) == list(range(50))


def test_statistics_computed_on_the_training_split_when_null(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=50, n_test=10)
    dm = ready(mnist(tmp_path, mean=None, std=None))
    pixels = torch.stack([dm.load_split("train")[i][0] for i in dm.train_set.source.indices]).double() / 255
    assert dm.mean == pytest.approx([pixels.mean().item()], abs=1e-5)
    assert dm.std == pytest.approx([pixels.std(unbiased=False).item()], abs=1e-5)
    assert dm.stats_cache() is None  # the configs carry the published statistics


def test_cifar10_reads_pickled_batches(tmp_path: Path, fake_cifar_accepted: None) -> None:
    folder = write_cifar10(tmp_path, n_train_per_batch=8, n_test=12)
    dm = ready(CIFAR10DataModule(root=tmp_path, download=False, batch_size=4, mean=[0.5] * 3, std=[0.25] * 3))
    assert dm.class_names == CIFAR10_CLASSES
    assert (len(dm.train_set) + len(dm.val_set), len(dm.val_set), len(dm.test_set)) == (40, 4, 12)
    written = pickle.loads((folder / "test_batch").read_bytes())
    image, label = dm.load_split("test")[0]
    # channel order survives torchvision's HWC array: the item is the written (3, 32, 32) image
    assert image.dtype == torch.uint8 and torch.equal(
        image, torch.from_numpy(written["data"][0].reshape(3, 32, 32))
    )
    assert int(label) == written["labels"][0]
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() >= -2.0 - 1e-5 and images.max() <= 2.0 + 1e-5


def test_cifar10_archive_placed_by_hand_is_unpacked(tmp_path: Path, fake_cifar_accepted: None) -> None:
    folder = write_cifar10(tmp_path, n_train_per_batch=4, n_test=4)
    with tarfile.open(tmp_path / datasets.CIFAR10.filename, "w:gz") as archive:
        archive.add(folder, arcname=folder.name)
    shutil.rmtree(folder)
    dm = ready(CIFAR10DataModule(root=tmp_path, download=False, mean=[0.5] * 3, std=[0.25] * 3))
    assert len(dm.test_set) == 4 and (folder / "batches.meta").is_file()


def test_cifar10_files_that_fail_the_checksum_are_reported(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_train_per_batch=2, n_test=2)  # fake files: torchvision's MD5 check rejects them
    with pytest.raises(DatasetFormatError, match="corrupt or not the official release"):
        ready(CIFAR10DataModule(root=tmp_path, download=False))


@pytest.mark.parametrize(
    ("module", "folder", "files", "url"),
    [
        (MNISTDataModule, "MNIST/raw", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"], MNIST_URL),
        (FashionMNISTDataModule, "FashionMNIST/raw", ["train-labels-idx1-ubyte.gz"], FASHION_URL),
        (CIFAR10DataModule, "cifar-10-batches-py", ["data_batch_5", "test_batch", "batches.meta"], CIFAR_URL),
    ],
    ids=["mnist", "fashion", "cifar10"],
)
def test_offline_download_names_files_folder_and_url(
    tmp_path: Path, network_lookups: list[str], module: type, folder: str, files: list[str], url: str
) -> None:
    dm = module(root=tmp_path / "data")
    with pytest.raises(DatasetNotFoundError) as raised:
        dm.prepare_data()
    message = str(raised.value)
    assert network_lookups, "the download was attempted"
    assert "downloading it failed" in message and "Temporary failure in name resolution" in message
    assert str(tmp_path / "data" / folder) in message and all(f in message for f in files)
    assert url in message and isinstance(raised.value, FileNotFoundError)


@pytest.mark.parametrize("module", [MNISTDataModule, FashionMNISTDataModule, CIFAR10DataModule])
def test_missing_files_with_download_off_never_touch_the_network(
    tmp_path: Path, network_lookups: list[str], module: type
) -> None:
    dm = module(root=tmp_path, download=False)
    dm.prepare_data()
    with pytest.raises(DatasetNotFoundError, match="data.download=false") as raised:
        dm.setup("fit")
    assert "Expected files:" in str(raised.value) and "Missing:" in str(raised.value)
    assert network_lookups == []


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, n_train=20, n_test=10, compress=True)
    packed = raw / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz is not a complete gzip file"):
        ready(mnist(tmp_path))
    assert not (raw / "train-images-idx3-ubyte").exists()  # no half-written file passes for the real one


def test_mismatched_idx_file_is_a_format_error(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, n_train=20, n_test=10)
    # a valid idx header of rank 1: a label file where an image file belongs
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 8) + bytes(8))
    with pytest.raises(DatasetFormatError, match="could not be read"):
        ready(mnist(tmp_path))


def test_image_and_label_counts_that_differ_name_the_split(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=20, n_test=10)
    labels = write_mnist(tmp_path / "other", n_train=20, n_test=12) / "t10k-labels-idx1-ubyte"
    shutil.copy(labels, tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    with pytest.raises(DatasetFormatError, match=r"test files in .* hold 10 images but 12 labels"):
        ready(mnist(tmp_path))


def nearest_centroid_accuracy(dm: MNISTDataModule | CIFAR10DataModule) -> float:
    """How well per-class mean images classify the test split: the fake data must be learnable."""
    train = [(x, y) for x, y in dm.train_dataloader()]
    images, labels = torch.cat([x for x, _ in train]).flatten(1), torch.cat([y for _, y in train])
    centroids = torch.stack([images[labels == k].mean(0) for k in range(dm.num_classes)])
    test_x, test_y = (torch.cat(t) for t in zip(*dm.test_dataloader(), strict=True))
    predicted = torch.cdist(test_x.flatten(1), centroids).argmin(1)
    return (predicted == test_y).float().mean().item()


def test_fake_data_is_learnable(tmp_path: Path, fake_cifar_accepted: None) -> None:
    write_mnist(tmp_path, n_train=80, n_test=30)
    write_cifar10(tmp_path, n_train_per_batch=16, n_test=30)
    cifar = CIFAR10DataModule(root=tmp_path, download=False, val_fraction=0.1, mean=[0.5] * 3, std=[0.25] * 3)
    assert nearest_centroid_accuracy(ready(mnist(tmp_path, val_fraction=0.1))) > 0.9
    assert nearest_centroid_accuracy(ready(cifar)) > 0.9
