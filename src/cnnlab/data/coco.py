"""COCO-style object detection: a folder of images and an instances JSON (``images``, ``annotations``,
``categories``), as COCO itself and most labelling tools export it.

Category ids become contiguous labels 0..K-1 in increasing id order; boxes go from [x, y, w, h] to XYXY,
clipped to their image (``images[].width/height``, or the file's own size where those are missing); boxes left
with no width or height are dropped, in every split, and both are counted in one log line per JSON file. An
image without annotations, or whose boxes were all dropped, has no boxes (a background image).
Instance masks (polygons, RLE) are not read. ``CocoDataModule`` serves the boxes to the detection task.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from cnnlab.data.base import ImageDataModule
from cnnlab.data.boxes import BoxRepairs, header_size
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.io import read_image

log = logging.getLogger(__name__)

REQUIRED = {
    "images": ("id", "file_name"),
    "annotations": ("image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


class CocoDetectionFiles(Dataset):
    """The images named in a COCO instances JSON, with their boxes, labels and crowd flags."""

    def __init__(
        self, images_dir: str | os.PathLike, annotation_file: str | os.PathLike, channels: int = 3
    ) -> None:
        self.images_dir = Path(images_dir).expanduser()
        self.annotation_file = Path(annotation_file).expanduser()
        self.channels = channels
        content = _load(self.annotation_file)
        categories = sorted(content["categories"], key=lambda c: c["id"])
        if not categories:
            raise DatasetFormatError(f"{self.annotation_file} lists no categories: detection needs classes")
        #: category names in increasing id order: label k is ``class_names[k]``
        self.class_names: list[str] = [str(c["name"]) for c in categories]
        self.category_ids: list[int] = [c["id"] for c in categories]
        self.images: list[Mapping[str, Any]] = list(content["images"])
        if not self.images:
            raise DatasetFormatError(f"{self.annotation_file} lists no images")
        self._check_images_exist()
        self.objects = self._group(content["annotations"])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image = read_image(self.images_dir / self.images[index]["file_name"], self.channels)
        boxes, labels, crowd = self.objects[index]
        # copies: a transform that changes a target in place must not change the stored annotations
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes), format="XYXY", canvas_size=tuple(image.shape[1:])
            ),
            "labels": torch.tensor(labels),
            "iscrowd": torch.tensor(crowd),
        }
        return tv_tensors.Image(image), target

    # --- helpers -----------------------------------------------------------------------------------------

    def _check_images_exist(self) -> None:
        if not self.images_dir.is_dir():
            raise DatasetNotFoundError(
                f"the image folder {self.images_dir} does not exist: it must hold the images named in "
                f"{self.annotation_file}"
            )
        names = [str(image["file_name"]) for image in self.images]
        missing = [name for name in names if not (self.images_dir / name).is_file()]
        if missing:
            more = " ..." if len(missing) > 5 else ""
            raise DatasetNotFoundError(
                f"{len(missing)} of {len(self.images)} images named in {self.annotation_file} are missing "
                f"from {self.images_dir}: {', '.join(missing[:5])}{more}. Check images_dir, or remove those "
                "entries"
            )

    def _group(self, annotations: list[Mapping[str, Any]]) -> list[tuple[np.ndarray, ...]]:
        """Per image (``images`` order): boxes (N, 4) XYXY float32 clipped to the image, labels (N,) int64,
        iscrowd (N,) bool; boxes with no area inside their image are dropped."""
        row = {image["id"]: i for i, image in enumerate(self.images)}
        label = {category: k for k, category in enumerate(self.category_ids)}
        boxes, rows, labels, crowd = [], [], [], []
        for number, annotation in enumerate(annotations):
            where = f"{self.annotation_file}: annotations[{number}] (id {annotation.get('id')})"
            if annotation["image_id"] not in row:
                raise DatasetFormatError(f"{where} names image_id {annotation['image_id']}, not in images")
            if annotation["category_id"] not in label:
                raise DatasetFormatError(
                    f"{where} names category_id {annotation['category_id']}; categories has ids "
                    f"{self.category_ids}"
                )
            bbox = annotation["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise DatasetFormatError(f"{where} has bbox {bbox!r}; COCO boxes are [x, y, width, height]")
            x, y, w, h = (float(v) for v in bbox)
            boxes.append((x, y, x + w, y + h))
            rows.append(row[annotation["image_id"]])
            labels.append(label[annotation["category_id"]])
            crowd.append(bool(annotation.get("iscrowd", 0)))
        rows = np.array(rows, dtype=np.int64)
        sizes = np.array([self._size(image) for image in self.images], dtype=np.float32).reshape(-1, 2)
        repairs = BoxRepairs()
        kept, rows, labels, crowd = repairs.fit(
            boxes, sizes[rows, 0], sizes[rows, 1], rows, np.array(labels, np.int64), np.array(crowd, bool)
        )
        repairs.log(self.annotation_file)
        order = np.argsort(rows, kind="stable")  # each image's boxes in the file's order
        ends = np.searchsorted(rows[order], np.arange(len(self.images)), side="right")
        return [(kept[at], labels[at], crowd[at]) for at in np.split(order, ends[:-1])]

    def _size(self, image: Mapping[str, Any]) -> tuple[float, float]:
        """The width and height of an ``images`` entry, from its file's header where the JSON lacks them."""
        width, height = image.get("width"), image.get("height")
        if isinstance(width, int | float) and isinstance(height, int | float) and width > 0 and height > 0:
            return float(width), float(height)
        return header_size(self.images_dir / image["file_name"])


def _load(path: Path) -> dict[str, Any]:
    """The parsed JSON, after checking the keys and fields this reader needs."""
    if not path.is_file():
        raise DatasetNotFoundError(f"the COCO annotation file {path} does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(content, dict):
        raise DatasetFormatError(f"{path} must hold a JSON object with keys {', '.join(REQUIRED)}")
    for key, fields in REQUIRED.items():
        if not isinstance(content.get(key), list):
            raise DatasetFormatError(
                f"{path} has no list {key!r}: a COCO instances file holds {', '.join(REQUIRED)} "
                "(image-info files without annotations cannot be read for detection)"
            )
        for number, entry in enumerate(content[key]):
            absent = [field for field in fields if not isinstance(entry, dict) or field not in entry]
            if absent:
                raise DatasetFormatError(f"{path}: {key}[{number}] lacks {', '.join(absent)}")
    return content


# --- the datamodule ----------------------------------------------------------------------------------------

COCO_URL = "http://images.cocodataset.org"


class CocoDataModule(ImageDataModule):
    """COCO-style detection: a folder of images and an instances JSON for training, another pair for testing.

    Paths are relative to ``root`` (or absolute). COCO 2017 itself trains on ``train2017`` and tests on
    ``val2017`` (the test split's annotations are not public). Validation is carved from the training images
    by the run's seed, or is the ``val_images`` / ``val_annotations`` pair when given. Every JSON file must
    list the same categories. Box labels are 0-based indices of ``class_names``.
    """

    targets = ("boxes",)

    def __init__(
        self,
        root: str | os.PathLike,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        test_images: str = "val2017",
        test_annotations: str = "annotations/instances_val2017.json",
        val_images: str | None = None,
        val_annotations: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("in_channels", 3)
        super().__init__(root=root, **kwargs)
        if (val_images is None) != (val_annotations is None):
            raise ValueError("data.val_images and data.val_annotations go together: set both or neither")
        self.files = {
            "train": (train_images, train_annotations),
            "test": (test_images, test_annotations),
            "val": (val_images, val_annotations),
        }
        self._categories: dict[str, list[str]] = {}

    def load_split(self, split: str) -> Dataset:
        assert self.root is not None
        images, annotations = (self.root / part for part in self.files[split])
        try:
            files = CocoDetectionFiles(images, annotations, channels=self.in_channels)
        except DatasetNotFoundError as err:
            raise DatasetNotFoundError(
                f"{err}. data.{split}_images and data.{split}_annotations name them (relative to data.root="
                f"{self.root}). COCO 2017 is {COCO_URL}/zips/train2017.zip, val2017.zip and "
                f"{COCO_URL}/annotations/annotations_trainval2017.zip, unzipped into data.root; any dataset "
                "exported in COCO's format works the same way"
            ) from err
        self._categories[split] = files.class_names
        if len(set(map(tuple, self._categories.values()))) > 1:
            listed = "; ".join(
                f"{split}: {len(names)}, {', '.join(names[:4])} ..."
                for split, names in self._categories.items()
            )
            raise DatasetFormatError(
                f"the annotation files list different categories ({listed}): a label would not mean the same "
                "class in each; use files exported from the same category list"
            )
        self._set_class_names(files.class_names)
        return files

    def own_validation(self) -> Dataset | None:
        return self.load_split("val") if self.files["val"][0] is not None else None
