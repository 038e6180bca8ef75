"""YOLO folders: normalised centre boxes become pixel XYXY, names come from the YAML, bad lines are named."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from fakedense import SCENES, write_yolo
from torchvision import tv_tensors

from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.yolo import YoloFolder, label_path


@pytest.fixture
def dataset_yaml(tmp_path: Path) -> Path:
    return write_yolo(tmp_path / "pets")


def edit_yaml(dataset_yaml: Path, /, **changes: object) -> None:
    config = yaml.safe_load(dataset_yaml.read_text())
    config.update(changes)
    dataset_yaml.write_text(yaml.safe_dump(config))


def test_reads_boxes_and_labels(dataset_yaml: Path) -> None:
    train, val = YoloFolder(dataset_yaml, "train"), YoloFolder(dataset_yaml, split="val")
    assert train.class_names == ["cat", "dog", "zebra"]
    assert (len(train), len(val)) == (2, 1)
    samples = [*train, *val]
    for (image, target), scene in zip(samples, SCENES, strict=True):
        assert isinstance(image, tv_tensors.Image) and image.shape == (3, scene.height, scene.width)
        boxes = target["boxes"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
        assert boxes.shape == (len(scene.rects), 4)
        assert tuple(boxes.canvas_size) == (scene.height, scene.width)
        expected = torch.tensor([rect.box for rect in scene.rects]).reshape(-1, 4)
        torch.testing.assert_close(boxes.as_subclass(torch.Tensor), expected, atol=1e-3, rtol=0)
        assert target["labels"].tolist() == [rect.label for rect in scene.rects]
        assert target["labels"].dtype == torch.int64


def test_names_as_a_mapping_and_nc(tmp_path: Path) -> None:
    dataset_yaml = write_yolo(tmp_path, names={0: "cat", 1: "dog", 2: "zebra"})
    edit_yaml(dataset_yaml, nc=3)
    assert YoloFolder(dataset_yaml).class_names == ["cat", "dog", "zebra"]
    edit_yaml(dataset_yaml, nc=4)
    with pytest.raises(DatasetFormatError, match="data.yaml: nc is 4 but names lists 3 classes"):
        YoloFolder(dataset_yaml)
    edit_yaml(dataset_yaml, nc=3, names={0: "cat", 2: "zebra"})
    with pytest.raises(DatasetFormatError, match=r"keys of names must be the indices 0..1, found \[0, 2\]"):
        YoloFolder(dataset_yaml)


def test_split_given_as_a_list_file_and_an_absolute_path(dataset_yaml: Path, tmp_path: Path) -> None:
    root = dataset_yaml.parent
    (root / "train.txt").write_text("./images/train/scene_a.png\n./images/val/scene_c.png\n")
    edit_yaml(dataset_yaml, path=str(root), train="train.txt")
    moved = tmp_path / "elsewhere.yaml"
    dataset_yaml.rename(moved)
    dataset = YoloFolder(moved, "train")
    assert [image.name for image in dataset.images] == ["scene_a.png", "scene_c.png"]
    assert dataset[0][1]["labels"].tolist() == [0, 2] and dataset[1][1]["labels"].tolist() == []


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("3 0.5 0.5 0.2 0.2", "class 3 is not an index of names"),
        ("0 0.5 0.5 0.2", "a detection label is 5 numbers, class cx cy w h; found 4"),
        ("0 0.5 0.5 0.2 0.2 0.1 0.1", "found 7"),
        ("1 12 30 8 8", r"must be normalised to \[0, 1\]"),
        ("1 0.5 -0.2 0.2 0.2", r"must be normalised to \[0, 1\]"),
        ("cat 0.5 0.5 0.2 0.2", "the fields must be numbers"),
    ],
)
def test_bad_label_line_names_file_and_line(dataset_yaml: Path, line: str, words: str) -> None:
    labels = dataset_yaml.parent / "labels" / "train" / "scene_b.txt"
    labels.write_text(labels.read_text() + "\n" + line + "\n")
    with pytest.raises(DatasetFormatError, match=f"scene_b.txt, line 3 .*{words}"):
        YoloFolder(dataset_yaml)


def test_rounding_beyond_one_is_tolerated_and_clamped(dataset_yaml: Path) -> None:
    labels = dataset_yaml.parent / "labels" / "val" / "scene_c.txt"
    labels.write_text("1 0.75 0.5 0.5004 1.0002\n")
    boxes = YoloFolder(dataset_yaml, "val")[0][1]["boxes"]
    expected = torch.tensor([[(0.75 - 0.2502) * 36, 0.0, 36.0, 30.0]])  # x1 and y0, y1 clamped to the image
    torch.testing.assert_close(boxes.as_subclass(torch.Tensor), expected)


def test_missing_split_and_folders(dataset_yaml: Path) -> None:
    with pytest.raises(DatasetFormatError, match="names no images for split 'test'; it names train, val"):
        YoloFolder(dataset_yaml, "test")
    edit_yaml(dataset_yaml, val="images/valid")
    with pytest.raises(DatasetNotFoundError, match="images/valid does not exist"):
        YoloFolder(dataset_yaml, "val")
    with pytest.raises(DatasetNotFoundError, match="nowhere.yaml does not exist"):
        YoloFolder(dataset_yaml.with_name("nowhere.yaml"))


def test_yaml_without_names(dataset_yaml: Path) -> None:
    config = yaml.safe_load(dataset_yaml.read_text())
    del config["names"]
    dataset_yaml.write_text(yaml.safe_dump(config))
    with pytest.raises(DatasetFormatError, match="data.yaml needs names"):
        YoloFolder(dataset_yaml)


def test_label_path_replaces_the_last_images_folder() -> None:
    image = Path("/data/images/coco/images/train/a.b.jpg")
    assert label_path(image) == Path("/data/images/coco/labels/train/a.b.txt")


def test_a_split_without_its_label_files_is_refused_naming_the_folder(dataset_yaml: Path) -> None:
    labels = dataset_yaml.parent / "labels"
    for path in (labels / "train").iterdir():
        path.unlink()
    with pytest.raises(
        DatasetFormatError, match=rf"train: 2 of 2 images have no label file; looked in {labels}"
    ):
        YoloFolder(dataset_yaml, "train")


def test_a_few_images_without_a_label_file_are_background_images(tmp_path: Path) -> None:
    scenes = [*SCENES[:2], *[replace(scene, name=f"{scene.name}_2") for scene in SCENES]]
    dataset_yaml = write_yolo(tmp_path / "pets", scenes=scenes)
    (tmp_path / "pets" / "labels" / "train" / "scene_a.txt").unlink()
    train = YoloFolder(dataset_yaml, "train")
    assert len(train) == 4 and len(train[0][1]["boxes"]) == 0


# --- boxes outside the image: clipped to it as corners, or dropped with their labels, when read -------------


def test_boxes_outside_the_image_are_clipped_or_dropped_in_every_split(
    dataset_yaml: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = dataset_yaml.parent / "labels"
    with (labels / "train" / "scene_a.txt").open("a") as file:  # 48 x 40
        file.write("1 1.0 0.9375 0.333333 0.375\n")  # pixels 40..56, 30..45: past the right and bottom edges
        file.write("0 1.0009 0.5 0.0008 0.2\n")  # right of the image (within the format's rounding)
        file.write("2 0.020833 0.05 0.208333 0.25\n")  # pixels -4..6, -3..7
    (labels / "val" / "scene_c.txt").write_text(  # 36 x 30
        "2 0.9 0.9 0.4 0.4\n"  # past the right and bottom edges
        "1 0.5 1.0008 0.2 0.001\n"  # below the image
        "0 0.916667 0.5 0.166667 0.2\n"  # touching the right edge, rounded to six decimals: not counted
    )
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.boxes"):
        train, val = YoloFolder(dataset_yaml, "train"), YoloFolder(dataset_yaml, "val")
    for image, target in [*train, *val]:
        height, width = image.shape[1:]
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
    target = train[0][1]
    expected = [*(rect.box for rect in SCENES[0].rects), [40, 30, 48, 40], [0, 0, 6, 7]]
    torch.testing.assert_close(
        target["boxes"].as_subclass(torch.Tensor), torch.tensor(expected), atol=1e-3, rtol=0
    )
    assert target["labels"].tolist() == [0, 2, 1, 2]
    target = val[0][1]
    expected = [[0.7 * 36, 0.7 * 30, 36, 30], [0.833333 * 36, 0.4 * 30, 36, 0.6 * 30]]
    torch.testing.assert_close(
        target["boxes"].as_subclass(torch.Tensor), torch.tensor(expected), atol=1e-3, rtol=0
    )
    assert target["labels"].tolist() == [2, 0]
    (train_line,) = [r.getMessage() for r in caplog.records if "(train of data.yaml)" in r.getMessage()]
    (val_line,) = [r.getMessage() for r in caplog.records if "(val of data.yaml)" in r.getMessage()]
    assert str(labels / "train") in train_line and str(labels / "val") in val_line
    assert "of 6 boxes, clipped 2" in train_line and "dropped 1 with no area" in train_line
    assert "of 3 boxes, clipped 1" in val_line and "dropped 1 with no area" in val_line
