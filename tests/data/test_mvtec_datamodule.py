"""The MVTec AD datamodule on a category folder in the distributed layout: splits, aligned masks, the
config, which tasks it serves, and what happens when the category is missing."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from fakedense import COLOURS, MVTEC_DEFECT, write_mvtec
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab import CONF_DIR
from cnnlab.config import check_pairing
from cnnlab.data.errors import DatasetNotFoundError
from cnnlab.data.mvtec import URL, MVTecDataModule
from cnnlab.errors import ConfigError
from cnnlab.tasks.anomaly import AnomalyTask
from cnnlab.tasks.autoencoder import AutoencoderTask


@pytest.fixture
def category(tmp_path: Path) -> Path:
    return write_mvtec(tmp_path / "mvtec", n_train=10, n_test_good=2, n_per_defect=2)


def datamodule(root: Path, image_size: int = 32, **kwargs) -> MVTecDataModule:
    module = MVTecDataModule(
        root=root, download=False, image_size=image_size, batch_size=4, spec=AnomalyTask.samples, **kwargs
    )
    module.setup()
    return module


def test_training_and_validation_hold_good_images_and_test_holds_all(category: Path) -> None:
    dm = datamodule(category)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 1, 6)
    for split in (dm.train_set, dm.val_set):
        assert all(target["anomaly"] == 0 and target["label"] == 0 for _, target in split)
    assert [target["anomaly"] for _, target in dm.test_set] == [0, 0, 1, 1, 1, 1]
    assert dm.class_names == ["good", "crack", "scratch"] and dm.num_classes == 3
    assert dm.contract()["class_names"] == ["good", "crack", "scratch"] and dm.contract()["mean"] == []


def test_validation_can_take_a_share_of_every_kind_of_test_image(category: Path) -> None:
    dm = datamodule(category, val_from_test=0.5)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 3, 3)  # all of train/good trains
    assert (
        sorted(t["label"] for _, t in dm.val_set) == [0, 1, 2] == sorted(t["label"] for _, t in dm.test_set)
    )
    again = datamodule(category, val_from_test=0.5, seed=7)
    assert again.val_set.source.indices == dm.val_set.source.indices  # the same images whatever the seed
    assert not set(dm.val_set.source.indices) & set(dm.test_set.source.indices)
    with pytest.raises(ValueError, match="data.val_from_test=1.0: give the fraction"):
        datamodule(category, val_from_test=1.0)


def test_masks_stay_on_the_defect_after_resizing(category: Path) -> None:
    dm = datamodule(category, image_size=32)
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and images.max() <= 1
    assert targets["mask"].shape == (4, 32, 32) and targets["mask"].dtype == torch.int64
    # 16 x 24 px scaled by 2 to 32 x 48, centre-cropped to 32 x 32: 8 px off each side
    expected = torch.zeros(32, 32, dtype=torch.int64)
    y0, y1, x0, x1 = (
        2 * MVTEC_DEFECT.y0,
        2 * MVTEC_DEFECT.y1,
        2 * MVTEC_DEFECT.x0 - 8,
        2 * MVTEC_DEFECT.x1 - 8,
    )
    expected[y0:y1, x0:x1] = 1
    assert not targets["mask"][:2].any()  # good images
    for image, mask in zip(images[2:], targets["mask"][2:], strict=True):
        assert torch.equal(mask, expected)
        colour = torch.tensor(COLOURS[MVTEC_DEFECT.label]) / 255
        inside = image[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]  # away from the resampled border
        torch.testing.assert_close(inside.mean(dim=(1, 2)), colour, atol=0.02, rtol=0)


def test_a_category_without_ground_truth_has_no_masks(category: Path) -> None:
    shutil.rmtree(category / "ground_truth")
    dm = datamodule(category)
    _, target = dm.test_set[3]
    assert "mask" not in target and target["anomaly"] == 1


def test_the_autoencoder_task_gets_images_without_anomaly_truth(category: Path) -> None:
    dm = MVTecDataModule(root=category, download=False, image_size=16, spec=AutoencoderTask.samples)
    dm.setup()
    _, target = dm.train_set[0]
    assert set(target) == {"label"}


def data_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_config_builds_the_datamodule_of_a_category_under_data_dir(tmp_path: Path) -> None:
    write_mvtec(tmp_path / "mvtec")  # the config's default category, bottle
    cfg = data_config("task=anomaly", "model=autoencoder_conv", "data=mvtec", f"paths.data_dir={tmp_path}")
    assert cfg.data.root == str(tmp_path / "mvtec" / "bottle")
    dm = instantiate(cfg.data, num_workers=0, spec=AnomalyTask.samples)
    dm.prepare_data()  # the category is there: nothing to download
    dm.setup()
    assert isinstance(dm, MVTecDataModule) and dm.image_size == 256 and len(dm.test_set) == 6


@pytest.mark.parametrize("task", ["anomaly", "autoencoder"])
def test_serves_anomaly_detection_and_autoencoding(task: str) -> None:
    check_pairing(data_config(f"task={task}", "model=autoencoder_conv", "data=mvtec"))


def test_a_classifier_is_refused_since_every_training_image_is_good() -> None:
    cfg = data_config("task=classification", "model=simple_cnn", "data=mvtec")
    with pytest.raises(
        ConfigError, match="needs a class label per image, which data=.* does not have"
    ) as err:
        check_pairing(cfg)
    assert "mvtec" not in str(err.value).split("Datasets for task=classification:")[1]


def test_a_missing_category_offline_names_the_archive_and_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "mvtec" / "bottle"
    with pytest.raises(DatasetNotFoundError, match="not an MVTec AD category folder"):
        datamodule(root)
    downloading = MVTecDataModule(root=root, download=True, spec=AnomalyTask.samples)
    # the whole dataset unpacks into the category's parent folder
    expected = f"MVTec AD is not in {re.escape(str(tmp_path / 'mvtec'))} .*{re.escape(URL)}"
    with pytest.raises(DatasetNotFoundError, match=expected):
        downloading.prepare_data()
