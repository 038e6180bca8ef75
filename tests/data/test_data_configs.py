"""The data configs of torchvision sets, image folders and landmarks compose and build their datamodules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakedata import write_image_folder, write_mnist
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from cnnlab import CONF_DIR, config  # noqa: F401  (config registers the resolvers)


def data_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides)).data


@pytest.mark.parametrize(
    ("option", "target", "size", "mean"),
    [
        ("mnist", "MNISTDataModule", 28, [0.1307]),
        ("fashion_mnist", "FashionMNISTDataModule", 28, [0.2860]),
        ("cifar10", "CIFAR10DataModule", 32, [0.4914, 0.4822, 0.4465]),
        ("landmarks", "LandmarksDataModule", 224, None),
    ],
)
def test_config_builds_its_datamodule(option: str, target: str, size: int, mean: list[float] | None) -> None:
    cfg = data_config(f"data={option}", "paths.data_dir=/somewhere")
    dm = instantiate(cfg)
    assert type(dm).__name__ == target and dm.image_size == size and dm.mean == mean
    assert str(dm.root).startswith("/somewhere/") and dm.allow_download


def test_image_folder_config_requires_root_and_counts_classes(tmp_path: Path) -> None:
    with pytest.raises(MissingMandatoryValue, match="data.root"):
        instantiate(data_config("data=image_folder"))
    root = write_image_folder(tmp_path, ["a", "b", "c"], n_per_class=5)
    sizes = ["data.image_size=32", "data.resize_size=36", "data.num_workers=0"]
    cfg = data_config("data=image_folder", f"data.root={root}", *sizes)
    assert cfg.num_classes == 3  # one per folder of train/
    dm = instantiate(cfg)
    dm.setup("fit")
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape[1:] == (3, 32, 32) and dm.class_names == ["a", "b", "c"]
    # a number given on the command line wins, and is still checked against the folders
    dm = instantiate(data_config("data=image_folder", f"data.root={root}", "data.num_classes=2", *sizes))
    with pytest.raises(ValueError, match="set data.num_classes=3"):
        dm.setup("fit")


def test_image_folder_classes_of_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    cfg = data_config("data=image_folder", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(InterpolationResolutionError, match="nowhere/train does not exist.*data.num_classes"):
        instantiate(cfg)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(InterpolationResolutionError, match="has no class folders"):
        _ = data_config("data=image_folder", f"data.root={tmp_path / 'empty'}").num_classes


def test_mnist_config_reads_files_from_data_dir(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", n_train=30, n_test=10)
    dm = instantiate(data_config("data=mnist", f"paths.data_dir={tmp_path}", "data.num_workers=0"))
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (10, 1, 28, 28) and labels.dtype == torch.int64
