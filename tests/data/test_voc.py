"""Pascal VOC as distributed: palette masks with 255 borders, XML boxes made 0-based, split lists, errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedense import SCENES, class_mask, write_voc
from PIL import Image
from torchvision import tv_tensors
from torchvision.datasets.voc import DATASET_YEAR_DICT

from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.voc import VOC_CLASSES, VOCDetectionFiles, VOCSegmentationFiles, download


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return write_voc(tmp_path)


@pytest.mark.parametrize("level", ["holds VOCdevkit", "VOCdevkit", "VOC2012"])
def test_segmentation_masks_keep_classes_and_borders(voc: Path, level: str) -> None:
    root = {"holds VOCdevkit": voc.parent.parent, "VOCdevkit": voc.parent, "VOC2012": voc}[level]
    dataset = VOCSegmentationFiles(root, split="trainval")
    assert len(dataset) == len(SCENES)
    assert dataset.class_names == ["background", *VOC_CLASSES] and len(dataset.class_names) == 21
    for (image, target), scene in zip(dataset, SCENES, strict=True):
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert image.shape == (3, scene.height, scene.width)
        mask = target["mask"]
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
        assert torch.equal(mask, torch.from_numpy(class_mask(scene, offset=1, border=255)).long())
    assert 255 in dataset[0][1]["mask"] and 3 in dataset[0][1]["mask"]  # border and bird (label 2 + 1)


def test_splits_follow_the_lists(voc: Path) -> None:
    assert len(VOCSegmentationFiles(voc, split="train")) == 2
    assert len(VOCSegmentationFiles(voc, split="val")) == 1
    assert len(VOCDetectionFiles(voc, split="val")) == 1


def test_detection_boxes_are_zero_based_edges(voc: Path) -> None:
    dataset = VOCDetectionFiles(voc, split="trainval", channels=1)
    assert dataset.class_names == VOC_CLASSES
    for (image, target), scene in zip(dataset, SCENES, strict=True):
        n = len(scene.rects)
        assert image.shape == (1, scene.height, scene.width)
        boxes = target["boxes"]
        assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
        assert tuple(boxes.canvas_size) == (scene.height, scene.width)
        assert boxes.tolist() == [rect.box for rect in scene.rects]
        assert target["labels"].tolist() == [rect.label for rect in scene.rects]
        assert target["labels"].dtype == torch.int64
        assert target["difficult"].tolist() == [rect.difficult for rect in scene.rects]
        assert target["difficult"].dtype == torch.bool


def test_difficult_objects_can_be_left_out(voc: Path) -> None:
    target = VOCDetectionFiles(voc, split="trainval", keep_difficult=False)[0][1]
    assert target["labels"].tolist() == [0] and target["boxes"].tolist() == [SCENES[0].rects[0].box]
    assert not target["difficult"].any()


def test_year_chooses_among_several(voc: Path) -> None:
    shutil.copytree(voc, voc.parent / "VOC2007")
    (voc.parent / "VOC2007" / "ImageSets" / "Main" / "val.txt").write_text("scene_a\nscene_b\n")
    with pytest.raises(DatasetFormatError, match=r"several VOC years \(2007, 2012\): choose one with year="):
        VOCDetectionFiles(voc.parent, split="val")
    assert len(VOCDetectionFiles(voc.parent, split="val", year="2007")) == 2
    assert len(VOCDetectionFiles(voc.parent.parent, split="val", year="2012")) == 1


def test_unknown_split_names_the_list_and_the_splits_there(voc: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="test.txt does not exist") as raised:
        VOCSegmentationFiles(voc, split="test")
    assert "train, trainval, val" in str(raised.value)


@pytest.mark.parametrize(
    ("reader", "removed"),
    [(VOCSegmentationFiles, "SegmentationClass/scene_b.png"), (VOCDetectionFiles, "Annotations/scene_b.xml")],
)
def test_image_without_annotation_is_named(voc: Path, reader: type, removed: str) -> None:
    (voc / removed).unlink()
    with pytest.raises(DatasetNotFoundError, match="1 files listed by the split are missing") as raised:
        reader(voc)
    assert removed in str(raised.value)


def test_unknown_class_in_xml_is_named(voc: Path) -> None:
    xml = voc / "Annotations" / "scene_b.xml"
    xml.write_text(xml.read_text().replace("<name>bicycle</name>", "<name>unicorn</name>"))
    with pytest.raises(DatasetFormatError, match="scene_b.xml: object 1 is named 'unicorn'") as raised:
        VOCDetectionFiles(voc)
    assert "aeroplane" in str(raised.value)


def test_malformed_xml_is_named(voc: Path) -> None:
    (voc / "Annotations" / "scene_a.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetFormatError, match="scene_a.xml is not valid XML"):
        VOCDetectionFiles(voc)


def test_box_without_coordinates_is_named(voc: Path) -> None:
    xml = voc / "Annotations" / "scene_b.xml"
    xml.write_text(xml.read_text().replace("<xmin>11</xmin>", ""))
    with pytest.raises(DatasetFormatError, match="scene_b.xml: object 1 .*xmin, ymin, xmax, ymax"):
        VOCDetectionFiles(voc)


def test_colour_mask_is_named(voc: Path) -> None:
    mask = voc / "SegmentationClass" / "scene_a.png"
    Image.fromarray(np.full((SCENES[0].height, SCENES[0].width), 128, dtype=np.uint8)).save(mask)
    with pytest.raises(DatasetFormatError, match=r"scene_a.png holds class indices \[128\]"):
        VOCSegmentationFiles(voc)[0]


@pytest.mark.parametrize(
    ("mode", "found"),
    [("L", r"holds class indices \[128\] and is a greyscale PNG"), ("RGB", r"is an RGB \(colour\) PNG")],
)
def test_a_mask_that_is_no_palette_of_voc_classes_says_what_it_is(voc: Path, mode: str, found: str) -> None:
    # opening the split finds it: no item is read
    size = (SCENES[1].width, SCENES[1].height)
    Image.new(mode, size, 128 if mode == "L" else (128, 0, 0)).save(voc / "SegmentationClass" / "scene_b.png")
    with pytest.raises(DatasetFormatError, match=rf'scene_b.png {found}\. A VOC mask is a palette \("P"'):
        VOCSegmentationFiles(voc, split="train")


def test_missing_voc_names_the_layout_and_archive(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as raised:
        VOCSegmentationFiles(tmp_path)
    message = str(raised.value)
    assert f"{tmp_path}/VOCdevkit/VOC<year>/JPEGImages" in message
    assert "VOCtrainval_11-May-2012.tar" in message


def test_offline_download_says_what_to_fetch_and_where(tmp_path: Path, network_lookups: list[str]) -> None:
    with pytest.raises(DatasetNotFoundError) as raised:
        download(tmp_path / "data")
    message = str(raised.value)
    assert network_lookups, "the download was attempted"
    assert "downloading it failed" in message and "Temporary failure in name resolution" in message
    assert DATASET_YEAR_DICT["2012"]["url"] in message
    assert "VOCtrainval_11-May-2012.tar" in message and f"into {tmp_path / 'data'}/" in message


def test_download_keeps_what_is_there(voc: Path, network_lookups: list[str]) -> None:
    assert download(voc.parent.parent) == voc and network_lookups == []


# --- detection: boxes outside the image are clipped to it, or dropped with their labels, when read ---------


def add_objects(xml: Path, *objects: tuple[str, int, int, int, int, int]) -> None:
    """Append objects (name, xmin, ymin, xmax, ymax as VOC writes them, 1-based, and difficult) to an XML."""
    written = "".join(
        f"<object><name>{name}</name><difficult>{hard}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>\n"
        for name, x0, y0, x1, y1, hard in objects
    )
    xml.write_text(xml.read_text().replace("</annotation>", f"{written}</annotation>"))


def add_boxes_outside(voc: Path) -> None:
    """Scene a (48 x 40, train list): a bicycle past the right and bottom edges, a difficult aeroplane wholly
    right of the image, a bird at negative coordinates; scene c (36 x 30, val list): a cat past the right and
    bottom edges and a dog wholly below the image."""
    a = [("bicycle", 41, 31, 56, 45, 0), ("aeroplane", 51, 5, 56, 10, 1), ("bird", -3, -2, 6, 7, 0)]
    add_objects(voc / "Annotations" / "scene_a.xml", *a)
    add_objects(voc / "Annotations" / "scene_c.xml", ("cat", 30, 25, 40, 34, 0), ("dog", 4, 32, 9, 36, 0))


def assert_inside_their_images(dataset: VOCDetectionFiles) -> None:
    for _, target in dataset:
        (height, width), boxes = target["boxes"].canvas_size, target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert len(target["labels"]) == len(target["difficult"]) == len(boxes)


def test_detection_boxes_outside_the_image_are_clipped_or_dropped_in_every_split(
    voc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_boxes_outside(voc)
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.boxes"):
        train, val = VOCDetectionFiles(voc, split="train"), VOCDetectionFiles(voc, split="val")
    assert_inside_their_images(train)
    assert_inside_their_images(val)
    target = train[0][1]
    assert target["boxes"].tolist() == [*(r.box for r in SCENES[0].rects), [40, 30, 48, 40], [0, 0, 6, 7]]
    assert target["labels"].tolist() == [0, 2, 1, 2]
    assert target["difficult"].tolist() == [False, True, False, False]  # the aeroplane's flag went with it
    target = val[0][1]
    assert target["boxes"].tolist() == [[29, 24, 36, 30]] and target["labels"].tolist() == [7]
    (train_line,) = [r.getMessage() for r in caplog.records if "Annotations (train list)" in r.getMessage()]
    (val_line,) = [r.getMessage() for r in caplog.records if "Annotations (val list)" in r.getMessage()]
    assert "of 6 boxes, clipped 2" in train_line and "dropped 1 with no area" in train_line
    assert "of 2 boxes, clipped 1" in val_line and "dropped 1 with no area" in val_line


def test_detection_boxes_are_clipped_to_the_jpeg_when_the_xml_has_no_size(voc: Path) -> None:
    add_boxes_outside(voc)
    xml = voc / "Annotations" / "scene_a.xml"
    xml.write_text(xml.read_text().replace("<width>48</width>", "<width>0</width>"))
    boxes = VOCDetectionFiles(voc, split="train")[0][1]["boxes"]
    assert boxes.tolist()[2:] == [[40, 30, 48, 40], [0, 0, 6, 7]]
