"""The datamodules of masks (shapes, Penn-Fudan, VOC, mask folders) built through their real configs for the
segmentation task, on small files in each format's exact layout."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedense import SCENES, write_mask_folder, write_penn_fudan, write_voc
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Subset

import cnnlab.data.scan
from cnnlab import CONF_DIR
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.voc import VOC_CLASSES
from cnnlab.errors import ConfigError
from cnnlab.samples import IGNORE_INDEX
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
                "data.num_classes=4",  # scene_a's masks hold index 3
            )
        )


# --- bad masks: found at setup, whichever split holds them ------------------------------------------------


def written(data: str, tmp_path: Path) -> DictConfig:
    """The config of ``data`` on small files written for it (9 mask-folder images, 9 photos, VOC's 6)."""
    if data == "mask_folder":
        root = write_mask_folder(tmp_path / "folder", scenes(3))
        return config(data, tmp_path, f"data.root={root}", "data.num_classes=4", "data.image_size=28")
    if data == "penn_fudan":
        write_penn_fudan(tmp_path / "penn_fudan", scenes(3))
        return config(data, tmp_path, "data.image_size=24", "data.download=false")
    write_voc(tmp_path / "voc", scenes=scenes(2))
    return config(data, tmp_path, "data.image_size=30", "data.download=false", "data.val_fraction=0.2")


def first_test_pair(datamodule) -> tuple[Path, Path]:
    """The (image, mask) files of the first test item, through the subsets and wrappers that hold it."""
    raw, index = datamodule.test_set.source, 0
    while not hasattr(raw, "samples"):
        raw, index = (raw.dataset, raw.indices[index]) if isinstance(raw, Subset) else (raw.source, index)
    return raw.samples[index]


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        ("mask_folder", "size"),
        ("mask_folder", "class"),
        ("penn_fudan", "size"),
        ("voc_segmentation", "size"),
        ("voc_segmentation", "class"),
    ],
)
def test_a_bad_mask_in_the_test_split_stops_setup_naming_it(tmp_path: Path, data: str, fault: str) -> None:
    cfg = written(data, tmp_path)
    _, mask = first_test_pair(build(cfg))
    height, width = np.asarray(Image.open(mask)).shape
    if fault == "size":
        Image.fromarray(np.zeros((height + 2, width), dtype=np.uint8)).save(mask)
        words = rf"{mask.name} is \({height + 2}, {width}\) \(H, W\) but its image \S+ is \({height}, "
    else:
        Image.fromarray(np.full((height, width), 99, dtype=np.uint8)).save(mask)
        words = rf"{mask.name} holds class indices \[99\]"
    with pytest.raises(DatasetFormatError, match=words):
        build(cfg)


def test_masks_are_decoded_once_and_again_only_when_they_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = written("voc_segmentation", tmp_path)  # two lists, one cache beside them
    build(cfg)
    assert (tmp_path / "voc" / "VOCdevkit" / "VOC2012" / ".cnnlab_masks.json").is_file()
    decoded: list[str] = []
    real = cnnlab.data.scan.check_mask
    monkeypatch.setattr(cnnlab.data.scan, "check_mask", lambda i, m: decoded.append(m.name) or real(i, m))
    build(cfg)
    assert decoded == []
    changed = tmp_path / "voc" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "scene_b_0.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    build(cfg)
    assert decoded == ["scene_b_0.png"]


def black_and_white(folder: Path) -> None:
    """Rewrite a mask folder's masks as most labelling tools save them: 0 background, 255 every object."""
    for path in (folder / "masks").glob("*.png"):
        Image.fromarray(np.where(np.asarray(Image.open(path)) > 0, 255, 0).astype(np.uint8)).save(path)


def test_black_and_white_masks_are_refused_unless_binary_masks_reads_them(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path / "folder", scenes(3))
    black_and_white(root)
    args = ("mask_folder", tmp_path, f"data.root={root}", "data.num_classes=2", "data.image_size=28")
    # without the option every object pixel is ignored (255), and a background-only model scores 1.0
    with pytest.raises(DatasetFormatError, match=r"only the values 0 and 255 .*set data.binary_masks=true"):
        build(config(*args))
    datamodule = build(config(*args, "data.binary_masks=true"))
    check_batches(datamodule, 28)
    train = datamodule.train_set.source
    masks = torch.cat([train[i][1]["mask"].flatten() for i in range(len(train))])
    assert set(masks.unique().tolist()) == {0, 1}
    nowhere = f"data.root={tmp_path / 'nowhere'}"
    with pytest.raises(ConfigError, match="data.binary_masks=true .* 2 classes .* data.num_classes=3"):
        build(config("mask_folder", tmp_path, nowhere, "data.num_classes=3", "data.binary_masks=true"))


@pytest.mark.parametrize("data", ["mask_folder", "penn_fudan", "voc_segmentation"])
def test_a_class_no_training_mask_holds_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: str
) -> None:
    if data == "mask_folder":
        names = ["background", "cat", "dog", "fox", "owl"]  # the masks hold 0..3
        root = write_mask_folder(tmp_path / "folder", scenes(3), classes=names)
        cfg = config(data, tmp_path, f"data.root={root}", "data.num_classes=5", "data.image_size=28")
        absent = "1 of 5 classes never occur in the training masks: 'owl' (4)."
    elif data == "penn_fudan":
        write_penn_fudan(tmp_path / "penn_fudan", [replace(SCENES[2], name=f"empty_{i}") for i in range(4)])
        cfg = config(data, tmp_path, "data.image_size=24", "data.download=false")
        absent = "1 of 2 classes never occur in the training masks: 'person' (1)."
    else:
        cfg = written(data, tmp_path)
        absent = "'cat' (8)"
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        datamodule = build(cfg)
        datamodule.setup("test")  # once per run, not once per stage
    (warning,) = [r.getMessage() for r in caplog.records if "never occur" in r.getMessage()]
    assert absent in warning and "The network cannot learn" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        build(written("mask_folder", tmp_path / "complete"))
    assert not [r for r in caplog.records if "never occur" in r.getMessage()]


@pytest.mark.parametrize("photos", [1, 2])
def test_penn_fudan_of_too_few_photos_says_how_many(tmp_path: Path, photos: int) -> None:
    write_penn_fudan(tmp_path / "penn_fudan", SCENES[:photos])
    cfg = config("penn_fudan", tmp_path, "data.image_size=24", "data.download=false")
    s = "s" if photos > 1 else ""
    with pytest.raises(DatasetFormatError, match=rf"PNGImages holds {photos} photo{s}: too few to hold out"):
        build(cfg)
