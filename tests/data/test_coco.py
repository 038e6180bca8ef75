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
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.coco"):
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
    dropped = [r for r in caplog.records if "zero width or height" in r.getMessage()]
    assert len(dropped) == 1 and "dropped 1 boxes" in dropped[0].getMessage()


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
