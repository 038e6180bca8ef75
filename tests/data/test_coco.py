"""COCO instances JSON: contiguous labels in id order, XYXY boxes, crowd flags, and clear errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fakedense import SCENES, write_coco
from torchvision import tv_tensors

from cnnlab.data.coco import CocoDetectionFiles
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    return write_coco(tmp_path)


def rewrite(annotation_file: Path, change: Callable[[dict], object]) -> None:
    content = json.loads(annotation_file.read_text())
    change(content)
    annotation_file.write_text(json.dumps(content))


def test_reads_boxes_labels_and_crowd_flags(
    coco: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.boxes"):
        dataset = CocoDetectionFiles(*coco)
    assert dataset.class_names == ["cat", "dog", "zebra"]  # category ids 1, 3, 7
    assert len(dataset) == len(SCENES)
    for (image, target), scene in zip(dataset, SCENES, strict=True):
        n = len(scene.rects)
        assert isinstance(image, tv_tensors.Image) and image.shape == (3, scene.height, scene.width)
        assert image.dtype == torch.uint8
        boxes = target["boxes"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.shape == (n, 4)
        assert boxes.dtype == torch.float32 and tuple(boxes.canvas_size) == (scene.height, scene.width)
        assert boxes.tolist() == [rect.box for rect in scene.rects]  # the zero-width box is gone
        assert target["labels"].tolist() == [rect.label for rect in scene.rects]
        assert target["iscrowd"].tolist() == [rect.crowd for rect in scene.rects]
        assert target["iscrowd"].dtype == torch.bool and target["labels"].dtype == torch.int64
    (line,) = [r.getMessage() for r in caplog.records if "instances.json" in r.getMessage()]
    assert "of 4 boxes, clipped 0" in line and "dropped 1 with no area" in line


def test_one_channel(coco: tuple[Path, Path]) -> None:
    assert CocoDetectionFiles(*coco, channels=1)[1][0].shape == (1, SCENES[1].height, SCENES[1].width)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_key_is_named(coco: tuple[Path, Path], key: str) -> None:
    rewrite(coco[1], lambda content: content.pop(key))
    with pytest.raises(DatasetFormatError, match=f"instances.json has no list '{key}'"):
        CocoDetectionFiles(*coco)


def test_entry_without_a_field_is_named(coco: tuple[Path, Path]) -> None:
    rewrite(coco[1], lambda content: content["annotations"][1].pop("bbox"))
    with pytest.raises(DatasetFormatError, match=r"instances.json: annotations\[1\] lacks bbox"):
        CocoDetectionFiles(*coco)


def test_missing_images_are_counted_and_named(coco: tuple[Path, Path]) -> None:
    images_dir, annotation_file = coco
    for name in ("scene_a.jpg", "scene_c.jpg"):
        (images_dir / name).unlink()
    with pytest.raises(DatasetNotFoundError, match="2 of 3 images named in") as raised:
        CocoDetectionFiles(images_dir, annotation_file)
    assert "scene_a.jpg, scene_c.jpg" in str(raised.value) and str(images_dir) in str(raised.value)


def test_unknown_category_is_named(coco: tuple[Path, Path]) -> None:
    rewrite(coco[1], lambda content: content["annotations"][0].update(category_id=99))
    with pytest.raises(DatasetFormatError, match=r"annotations\[0\] .* category_id 99; categories has ids"):
        CocoDetectionFiles(*coco)


def test_unknown_image_id_is_named(coco: tuple[Path, Path]) -> None:
    rewrite(coco[1], lambda content: content["annotations"][0].update(image_id=404))
    with pytest.raises(DatasetFormatError, match=r"annotations\[0\] .* image_id 404, not in images"):
        CocoDetectionFiles(*coco)


def test_missing_or_broken_json(coco: tuple[Path, Path]) -> None:
    images_dir, annotation_file = coco
    with pytest.raises(DatasetNotFoundError, match="nowhere.json does not exist"):
        CocoDetectionFiles(images_dir, annotation_file.with_name("nowhere.json"))
    annotation_file.write_text('{"images": [')
    with pytest.raises(DatasetFormatError, match="instances.json is not valid JSON"):
        CocoDetectionFiles(images_dir, annotation_file)


def test_missing_image_folder(coco: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="the image folder .*elsewhere does not exist"):
        CocoDetectionFiles(tmp_path / "elsewhere", coco[1])


# --- boxes outside the image: clipped to it, or dropped with their labels and flags, when read -------------


def add_boxes_outside(annotation_file: Path) -> None:
    """Scene a (48 x 40) gets a dog past the right and bottom edges, a crowd of cats wholly right of the
    image and a zebra at negative coordinates; scene c (36 x 30) a dog wholly below it."""
    boxes = [
        (10, 3, [40, 30, 16, 15], 0),  # image id, category id, bbox, iscrowd
        (10, 1, [50, 4, 6, 6], 1),
        (10, 7, [-4, -3, 10, 10], 0),
        (12, 3, [5, 31, 10, 6], 0),
    ]
    content = json.loads(annotation_file.read_text())
    for image_id, category, bbox, crowd in boxes:
        number = len(content["annotations"]) + 1
        content["annotations"].append(
            {"id": number, "image_id": image_id, "category_id": category, "bbox": bbox, "iscrowd": crowd}
        )
    annotation_file.write_text(json.dumps(content))


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(
    coco: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    add_boxes_outside(coco[1])
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.boxes"):
        dataset = CocoDetectionFiles(*coco)
    assert len(dataset) == len(SCENES)  # scene c, all of whose boxes were dropped, is a background image
    for _, target in dataset:
        (height, width), boxes = target["boxes"].canvas_size, target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
    target = dataset[0][1]
    assert target["boxes"].tolist() == [*(r.box for r in SCENES[0].rects), [40, 30, 48, 40], [0, 0, 6, 7]]
    assert target["labels"].tolist() == [0, 2, 1, 2] and target["iscrowd"].tolist() == [False] * 4
    assert dataset[2][1]["boxes"].shape == (0, 4) and dataset[2][1]["labels"].tolist() == []
    # 3 boxes of the scenes, the zero-width one of write_coco and 4 added: 2 clipped, 3 dropped
    (line,) = [r.getMessage() for r in caplog.records if "instances.json" in r.getMessage()]
    assert "of 8 boxes, clipped 2" in line and "dropped 3 with no area" in line


def test_image_sizes_missing_from_the_json_are_read_from_the_files(coco: tuple[Path, Path]) -> None:
    add_boxes_outside(coco[1])
    rewrite(coco[1], lambda content: [image.pop("width") for image in content["images"]])
    target = CocoDetectionFiles(*coco)[0][1]
    assert target["boxes"].tolist()[2:] == [[40, 30, 48, 40], [0, 0, 6, 7]]
