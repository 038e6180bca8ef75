"""YOLO (Ultralytics) detection folders: a dataset YAML, ``images/<split>/*``, ``labels/<split>/<stem>.txt``.

The YAML names the folder (``path``, optional: the YAML's own folder by default; a relative path is taken
from the YAML's folder), each split's images (``train``, ``val``, ``test``: a folder, a ``.txt`` list of
images, or a list of those) and the classes (``names``: a list or ``{index: name}``; ``nc`` optional).
An image's labels sit where its path has ``labels`` for its last ``images`` folder and ``.txt`` for its
suffix; each line is ``class cx cy w h`` with coordinates normalised to [0, 1]. Each box is clipped to the
image (to [0, 1] as corners) and one left with no width or height dropped, in every split, both counted in
one log line per split; an image whose boxes were all dropped is a background image. An image without a label
file has no objects (a background image), but a split where most images lack one is refused: its labels
are elsewhere. ``YoloDataModule`` serves the boxes to the detection task.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.ops import box_convert

from cnnlab.data.base import ImageDataModule
from cnnlab.data.boxes import BoxRepairs
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.io import read_image

log = logging.getLogger(__name__)

# labelling tools round coordinates; a value this far outside [0, 1] is still taken (its box is then clipped)
TOLERANCE = 1e-3
# a corner moved by no more than this when clipped was rounded (labels carry six decimals), not outside
ROUNDING = 1e-6


class YoloFolder(Dataset):
    """The images of one split of a YOLO dataset, with their boxes and labels (indices into ``names``)."""

    def __init__(self, dataset_yaml: str | os.PathLike, split: str = "train", channels: int = 3) -> None:
        self.dataset_yaml = Path(dataset_yaml).expanduser()
        self.channels = channels
        config = _load(self.dataset_yaml)
        self.class_names: list[str] = class_names(config, self.dataset_yaml)
        base = Path(config.get("path") or self.dataset_yaml.parent).expanduser()
        self.folder = base if base.is_absolute() else self.dataset_yaml.parent / base
        if not config.get(split):
            present = [key for key in ("train", "val", "test") if config.get(key)]
            raise DatasetFormatError(
                f"{self.dataset_yaml} names no images for split {split!r}; it names "
                f"{', '.join(present) or 'none'}"
            )
        entries = config[split] if isinstance(config[split], list) else [config[split]]
        self.images = [image for entry in entries for image in self._list_images(str(entry))]
        if not self.images:
            raise DatasetFormatError(f"{split}: {config[split]} in {self.dataset_yaml} holds no images")
        labels = [label_path(image) for image in self.images]
        self._check_labels_present(split, labels)
        repairs = BoxRepairs()
        self.objects = [self._read_labels(path, repairs) for path in labels]
        repairs.log(f"{', '.join(_folders(labels))} ({split} of {self.dataset_yaml.name})")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image = read_image(self.images[index], self.channels)
        height, width = image.shape[1:]
        labels, corners = self.objects[index]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = torch.from_numpy(corners) * scale  # clipped to [0, 1] when read: inside the image
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor(labels),
        }
        return tv_tensors.Image(image), target

    # --- helpers -----------------------------------------------------------------------------------------

    def _list_images(self, entry: str) -> list[Path]:
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else self.folder / path
        if path.suffix == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            images = [path.parent / line for line in lines]  # an absolute line stays as it is
            missing = [str(image) for image in images if not image.is_file()]
            if missing:
                raise DatasetNotFoundError(
                    f"{path} lists {len(missing)} images that do not exist: {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}"
                )
            return images
        if not path.is_dir():
            raise DatasetNotFoundError(
                f"{path} does not exist: {self.dataset_yaml} names it as a folder of images (relative paths "
                f"start from {self.folder})"
            )
        return sorted(
            p
            for p in path.rglob("*")
            if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )

    def _check_labels_present(self, split: str, labels: list[Path]) -> None:
        """An image without a label file is a background image, but a split of mostly such images is a
        dataset whose labels are elsewhere: it would train and score on no boxes at all."""
        missing = [path for path in labels if not path.is_file()]
        if len(missing) * 2 <= len(labels):
            if missing:
                log.info(
                    "data: %s: %d of %d images have no label file (background images)",
                    split,
                    len(missing),
                    len(labels),
                )
            return
        raise DatasetFormatError(
            f"{split}: {len(missing)} of {len(labels)} images have no label file; looked in "
            f"{', '.join(_folders(missing))} (YOLO keeps each image's labels "
            "where its path has labels/ for images/ and .txt for its suffix). Put the label files there; a "
            "background image takes an empty one."
        )

    def _read_labels(self, path: Path, repairs: BoxRepairs) -> tuple[np.ndarray, np.ndarray]:
        """Labels (N,) int64 and normalised XYXY boxes (N, 4) float32 clipped to [0, 1] of a label file."""
        if not path.is_file():
            return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32)
        labels, boxes = [], []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}, line {number} ({line.strip()!r})"
            if len(fields) != 5:
                raise DatasetFormatError(
                    f"{where}: a detection label is 5 numbers, class cx cy w h; found {len(fields)}"
                )
            try:
                label, values = float(fields[0]), [float(v) for v in fields[1:]]
            except ValueError as err:
                raise DatasetFormatError(f"{where}: the fields must be numbers") from err
            if not label.is_integer() or not 0 <= label < len(self.class_names):
                raise DatasetFormatError(
                    f"{where}: class {fields[0]} is not an index of names (0..{len(self.class_names) - 1} in "
                    f"{self.dataset_yaml})"
                )
            if not all(-TOLERANCE <= v <= 1 + TOLERANCE for v in values):
                raise DatasetFormatError(
                    f"{where}: cx cy w h must be normalised to [0, 1] (divided by the image's width and "
                    "height)"
                )
            labels.append(int(label))
            boxes.append(values)
        corners = box_convert(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), "cxcywh", "xyxy")
        corners, labels = repairs.fit(corners.numpy(), 1.0, 1.0, np.array(labels, np.int64), atol=ROUNDING)
        return labels, corners


def _folders(paths: list[Path]) -> list[str]:
    """The first three folders of ``paths`` (sorted), then "..." when there are more."""
    folders = sorted({str(path.parent) for path in paths})
    return folders[:3] + ["..."] * (len(folders) > 3)


def label_path(image: Path) -> Path:
    """The label file of an image: its last ``images`` folder becomes ``labels``, its suffix ``.txt``."""
    parts = list(image.parts)
    if "images" in parts:
        last = len(parts) - 1 - parts[::-1].index("images")
        parts[last] = "labels"
    return Path(*parts).with_suffix(".txt")


def class_names(config: dict[str, Any], source: Path) -> list[str]:
    """The class names of a dataset YAML's ``names`` (a list or ``{index: name}``), checked against ``nc``."""
    names = config.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetFormatError(
                f"{source}: the keys of names must be the indices 0..{len(names) - 1}, found {sorted(names)}"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetFormatError(
            f"{source} needs names: a list of class names, or a mapping {{0: name, 1: name, ...}}"
        )
    if "nc" in config and config["nc"] != len(names):
        raise DatasetFormatError(f"{source}: nc is {config['nc']} but names lists {len(names)} classes")
    return [str(name) for name in names]


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetNotFoundError(f"the dataset YAML {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DatasetFormatError(f"{path} is not valid YAML ({err})") from err
    if not isinstance(config, dict):
        raise DatasetFormatError(f"{path} must be a mapping with train, val and names")
    return config


class YoloDataModule(ImageDataModule):
    """A YOLO detection folder described by its dataset YAML; box labels are 0-based indices of ``names``.

    Training uses the YAML's ``train_split`` entry, testing its ``test_split`` entry (``val`` by default, as
    most YOLO datasets ship no labelled ``test``). Validation is carved from the training images by the run's
    seed, or is the ``val_split`` entry when one is named (a dataset with train, val and test).
    """

    targets = ("boxes",)

    def __init__(
        self,
        dataset_yaml: str | os.PathLike,
        train_split: str = "train",
        test_split: str = "val",
        val_split: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("in_channels", 3)
        super().__init__(**kwargs)
        self.dataset_yaml = Path(dataset_yaml).expanduser()
        self.splits = {"train": train_split, "test": test_split, "val": val_split}

    def load_split(self, split: str) -> Dataset:
        files = YoloFolder(self.dataset_yaml, self.splits[split], channels=self.in_channels)
        self._set_class_names(files.class_names)
        return files

    def own_validation(self) -> Dataset | None:
        return self.load_split("val") if self.splits["val"] else None
