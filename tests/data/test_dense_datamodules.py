"""The datamodules of masks (shapes, Penn-Fudan, VOC, mask folders) built through their real configs for the
segmentation task, on small files in each format's exact layout."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fakedense import SCENES, write_mask_folder, write_penn_fudan, write_voc
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab import CONF_DIR
from cnnlab.data.errors import DatasetNotFoundError
from cnnlab.data.samples import IGNORE_INDEX
from cnnlab.data.voc import VOC_CLASSES
from cnnlab.tasks.segmentation import SegmentationTask

# small sizes for the fake files; every other value comes from the data config
SMALL = ["data.num_workers=0", "data.batch_size=4"]


def scenes(copies: int) -> list:
    """``copies`` of the known scenes, each image under a name of its own."""
    return [replace(scene, name=f"{scene.name}_{i}") for i in range(copies) for scene in SCENES]


def config(data: str, data_dir: Path, *overrides: str, augmentation: str = "seg_basic") -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "task=segmentation",
                f"data={data}",
                f"augmentation={augmentation}",
                f"paths.data_dir={data_dir}",
                *SMALL,
                *overrides,
            ],
        )
    GlobalHydra.instance().clear()
    return cfg


def build(cfg: DictConfig):
    """The datamodule as train.py builds it for the segmentation task, set up."""
    datamodule = instantiate(cfg.data, _partial_=True)(
        augmentation=instantiate(cfg.augmentation), spec=SegmentationTask.samples
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def check_batches(datamodule, crop: int) -> None:
    """Training batches stack at the crop size; evaluation batches keep each image's aspect, padded."""
    images, targets = next(iter(datamodule.train_dataloader()))
    assert images.shape[1:] == (3, crop, crop) and images.dtype == torch.float32
    assert targets["mask"].shape == (len(images), crop, crop) and targets["mask"].dtype == torch.int64
    assert set(targets) == {"mask"}
    images, targets = next(iter(datamodule.test_dataloader()))
    assert targets["mask"].shape == (len(images), *images.shape[-2:])
    allowed = set(range(datamodule.num_classes)) | {IGNORE_INDEX}
    assert set(targets["mask"].unique().tolist()) <= allowed


def test_shapes(tmp_path: Path) -> None:
    cfg = config("shapes", tmp_path, "data.train_size=20", "data.test_size=6", "data.image_size=32")
    datamodule = build(cfg)
    assert datamodule.class_names == ["background", "circle", "square", "triangle"]
    assert datamodule.num_classes == cfg.model.num_classes == cfg.task.num_classes == 4
    assert [len(s) for s in (datamodule.train_set, datamodule.val_set, datamodule.test_set)] == [18, 2, 6]
    check_batches(datamodule, 32)
    image, target = datamodule.test_set[0]
    assert image.shape == (3, 32, 32) and target["mask"].max() <= 3


def test_penn_fudan_person_versus_background(tmp_path: Path) -> None:
    write_penn_fudan(tmp_path / "penn_fudan", scenes(3))
    cfg = config("penn_fudan", tmp_path, "data.image_size=24", "data.download=false")
    datamodule = build(cfg)
    assert datamodule.class_names == ["background", "person"] and cfg.model.num_classes == 2
    sizes = [len(s) for s in (datamodule.train_set, datamodule.val_set, datamodule.test_set)]
    assert sum(sizes) == 9 and sizes[2] == round(9 * cfg.data.test_fraction)
    check_batches(datamodule, 24)
    # every pedestrian is class 1, whatever its instance id in PedMasks
    masks = [datamodule.test_set[i][1]["mask"] for i in range(len(datamodule.test_set))]
    assert set(torch.cat([m.flatten() for m in masks]).unique().tolist()) <= {0, 1}
    assert any((m == 1).any() for m in masks)
    # the held-out photos are the same in every run, whatever the run's seed
    other = build(config("penn_fudan", tmp_path, "data.image_size=24", "data.download=false", "seed=7"))
    assert other.test_set.source.indices == datamodule.test_set.source.indices


def test_voc_keeps_the_border_ignored_and_tests_on_val(tmp_path: Path) -> None:
    write_voc(tmp_path / "voc", scenes=scenes(2))  # train: 5 images, val: the last
    cfg = config(
        "voc_segmentation", tmp_path, "data.image_size=30", "data.download=false", "data.val_fraction=0.2"
    )
    datamodule = build(cfg)
    assert datamodule.class_names == ["background", *VOC_CLASSES] and cfg.model.num_classes == 21
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (4, 1, 1)
    check_batches(datamodule, 30)
    # scene_a at 30 px: the 255 ring around its aeroplane (1) and bird (3) survives the resize
    raw = datamodule.load_split("train")
    index = next(i for i, (_, mask) in enumerate(raw.samples) if mask.stem == "scene_a_0")
    mask = datamodule.val_set.transform(*raw[index])[1]["mask"]
    assert set(mask.unique().tolist()) == {0, 1, 3, IGNORE_INDEX}


def test_voc_offline_without_files_says_where_to_put_them(tmp_path: Path) -> None:
    cfg = config("voc_segmentation", tmp_path)
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)Pascal VOC 2012 is not in .*voc.*VOCtrainval_11-May-2012.tar"
    ):
        build(cfg)


def test_mask_folder_names_classes_from_classes_txt(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path / "folder", scenes(4), classes=["background", "cat", "dog", "fox"])
    cfg = config("mask_folder", tmp_path, f"data.root={root}", "data.num_classes=4", "data.image_size=28")
    datamodule = build(cfg)
    assert datamodule.class_names == ["background", "cat", "dog", "fox"]
    sizes = [len(s) for s in (datamodule.train_set, datamodule.val_set, datamodule.test_set)]
    assert sum(sizes) == 12 and sizes[2] == round(12 * cfg.data.test_fraction)
    check_batches(datamodule, 28)


def test_mask_folder_test_root_and_names_from_the_config(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path / "train", scenes(3))
    test_root = write_mask_folder(tmp_path / "test", SCENES[:2])
    cfg = config(
        "mask_folder",
        tmp_path,
        f"data.root={root}",
        f"data.test_root={test_root}",
        "data.num_classes=4",
        "data.class_names=[ground,red,green,blue]",
        "data.image_size=28",
        augmentation="seg_standard",
    )
    datamodule = build(cfg)
    assert datamodule.class_names == ["ground", "red", "green", "blue"] and len(datamodule.test_set) == 2
    check_batches(datamodule, 28)


def test_mask_folder_without_names_counts_num_classes(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path / "folder", scenes(3))
    cfg = config("mask_folder", tmp_path, f"data.root={root}", "data.num_classes=5", "data.image_size=28")
    assert build(cfg).class_names == ["0", "1", "2", "3", "4"]


def test_mask_folder_settings_that_do_not_fit_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data=mask_folder needs data.root .* and data.num_classes"):
        build(config("mask_folder", tmp_path))
    root = write_mask_folder(tmp_path / "folder", scenes(3), classes=["background", "cat", "dog"])
    with pytest.raises(ValueError, match="needs data.root"):
        build(config("mask_folder", tmp_path, f"data.root={root}"))
    with pytest.raises(
        ValueError, match="the dataset has 3 classes but data.num_classes=4; set data.num_classes=3"
    ):
        build(config("mask_folder", tmp_path, f"data.root={root}", "data.num_classes=4"))
    with pytest.raises(ValueError, match="too few to hold out"):
        build(
            config(
                "mask_folder",
                tmp_path,
                f"data.root={write_mask_folder(tmp_path / 'two', SCENES[:2])}",
                "data.num_classes=3",
            )
        )
