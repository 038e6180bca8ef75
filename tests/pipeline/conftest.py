"""Fixtures of the pipeline tests: every dataset's real on-disk format, small."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from fakedata import write_cifar10, write_image_folder, write_landmarks, write_mnist
from fakedense import (
    SCENES,
    write_coco,
    write_mask_folder,
    write_mvtec,
    write_penn_fudan,
    write_voc,
    write_yolo,
)

# twice the usual scenes: after the test and validation images are set aside, two remain to train on, as a
# batch of one cannot train the networks whose batch norm follows a global pooling (DeepLabV3's ASPP)
SCENES_X2 = SCENES + tuple(replace(scene, name=f"{scene.name}_2") for scene in SCENES)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small files in every dataset's real on-disk format, under the folder names the data configs use."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "mnist", n_train=40, n_test=10)
    write_mnist(root / "fashion_mnist", n_train=40, n_test=10, fashion=True)
    write_cifar10(root / "cifar10", n_train_per_batch=8, n_test=10)
    write_image_folder(root / "folder", ["cat", "dog", "fox"], n_per_class=6)
    write_landmarks(root / "landmarks", n_classes=3, n_per_class=6)
    write_penn_fudan(root / "penn_fudan", scenes=SCENES_X2)
    write_voc(root / "voc", scenes=SCENES_X2)
    write_yolo(root / "yolo", scenes=SCENES_X2)
    write_mask_folder(root / "mask_folder", SCENES_X2, classes=["background", "cat", "dog", "zebra"])
    write_mvtec(root / "mvtec")
    # COCO 2017's layout: train2017/, val2017/ and annotations/instances_<split>.json
    images, annotations = write_coco(root / "coco" / "raw", scenes=SCENES_X2)
    (root / "coco" / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        shutil.copytree(images, root / "coco" / split)
        shutil.copy(annotations, root / "coco" / "annotations" / f"instances_{split}.json")
    return root


@pytest.fixture
def fit_small_files(data_dir: Path):
    """Point a composed config's data at the small files of ``data_dir``, as the task it trains needs."""

    def fit(cfg) -> None:
        cfg.paths.data_dir = str(data_dir)
        cfg.callbacks = {}
        cfg.data.num_workers = 0
        if "download" in cfg.data:
            cfg.data.download = False
        kind = cfg.data._target_.rsplit(".", 1)[-1]
        if kind == "ShapesDataModule":  # drawn on the fly: a few batches, not the thousand images of a lesson
            cfg.data.train_size, cfg.data.test_size = 64, 16
        if kind in ("ImageFolderDataModule", "LandmarksDataModule"):
            cfg.data.num_classes = 3
        if kind == "ImageFolderDataModule":
            cfg.data.root = str(data_dir / "folder")
        # the small files hold three object classes; the YOLO and mask folders are where they were written
        if kind in ("CocoDataModule", "YoloDataModule"):
            cfg.data.num_classes = 3
        if kind == "YoloDataModule":
            cfg.data.dataset_yaml = str(data_dir / "yolo" / "data.yaml")
        if kind == "MaskFolderDataModule":
            cfg.data.root, cfg.data.num_classes = str(data_dir / "mask_folder"), 4
        if cfg.task._target_.endswith("AnomalyTask") and cfg.data.get("normal_classes", 0) is None:
            cfg.data.normal_classes = [0]
        for key in ("weights", "weights_backbone"):  # nothing can be downloaded here
            if key in cfg.model:
                cfg.model[key] = None

    return fit
