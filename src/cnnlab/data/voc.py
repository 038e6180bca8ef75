"""Pascal VOC as distributed: ``VOCdevkit/VOC<year>/`` with ``JPEGImages/``, ``SegmentationClass/``,
``Annotations/`` and the split lists in ``ImageSets/{Segmentation,Main}/<split>.txt``.

Segmentation masks are palette PNGs of class indices 0..20 with 255 on object borders (ignored, kept as 255);
every mask of a split is decoded once when the split is opened (cached beside the data), so a bad one stops a
run before training. ``VOCSegmentationDataModule`` serves the segmentation masks to the segmentation task.
Annotation boxes count pixels from 1, both ends included; they become 0-based pixel edges (xmin - 1, ymin - 1,
xmax, ymax), as detectron2 reads VOC, so that they mean what COCO's and every other reader's boxes mean.
They are clipped to the image (the XML's ``<size>``, or the JPEG's own size where that is missing or 0) and
those left with no width or height dropped, in every split, counted in one log line per split.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets, tv_tensors
from torchvision.datasets.voc import DATASET_YEAR_DICT

from cnnlab.data.base import ImageDataModule
from cnnlab.data.boxes import BoxRepairs, header_size
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.io import MASK_MODES, read_image, read_mask
from cnnlab.data.masks import NamesAbsentClasses, check_readable, check_size
from cnnlab.data.scan import scan_masks
from cnnlab.samples import IGNORE_INDEX

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


class VOCSegmentationFiles(Dataset):
    """VOC images with their class masks (0 background, 1..20 ``VOC_CLASSES``, 255 borders) for one split."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        channels: int = 3,
        year: str | None = None,
        workers: int = 0,
    ) -> None:
        self.class_names = ["background", *VOC_CLASSES]
        self.folder = year_folder(root, year)
        self.channels = channels
        stems = _split_stems(self.folder, "Segmentation", split)
        self.samples = _paired(self.folder, stems, "SegmentationClass", ".png")
        facts = scan_masks(self.samples, self.folder, workers)
        for image, mask in self.samples:
            found = facts[mask]
            if found.mode and found.mode not in MASK_MODES:
                raise DatasetFormatError(f"{mask} is {_described(found.mode)}. {VOC_MASKS}")
            check_readable(mask, image, found)
            self._check_classes(mask, found.values, found.mode)
        self.modes = [facts[mask].mode for _, mask in self.samples]
        #: the classes each mask holds (borders left out)
        self.mask_classes = [frozenset(facts[mask].values) - {IGNORE_INDEX} for _, mask in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.channels)
        mask = read_mask(mask_path)
        # checked when the split was opened: these catch a file replaced during the run
        check_size(mask_path, mask.shape, image_path, image.shape[1:])
        self._check_classes(mask_path, mask.unique().tolist(), self.modes[index])
        return tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)}

    def _check_classes(self, path: Path, values: list[int] | tuple[int, ...], mode: str) -> None:
        unknown = [v for v in values if v >= len(self.class_names) and v != IGNORE_INDEX]
        if unknown:
            raise DatasetFormatError(
                f"{path} holds class indices {unknown} and is {_described(mode)}. {VOC_MASKS}"
            )


#: what a VOC mask is, for the messages that refuse one
VOC_MASKS = (
    f'A VOC mask is a palette ("P" mode) PNG of class indices: 0 the background, 1..20 the classes, '
    f"{IGNORE_INDEX} object borders, as VOCdevkit's SegmentationClass/ holds them. Replace it with the "
    "original file (a colour picture of the classes cannot be read back as indices)"
)


def _described(mode: str) -> str:
    """A PIL mode as a person names the kind of PNG."""
    kinds = {"P": "a palette PNG", "L": "a greyscale PNG", "1": "a 1-bit PNG", "RGB": "an RGB (colour) PNG"}
    kinds |= {"RGBA": "an RGBA (colour) PNG", "LA": "a greyscale PNG with alpha", "I;16": "a 16-bit PNG"}
    return kinds.get(mode, f"a PNG of PIL mode {mode!r}")


class VOCDetectionFiles(Dataset):
    """VOC images with their object boxes, labels (indices into ``VOC_CLASSES``) and difficult flags."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        channels: int = 3,
        keep_difficult: bool = True,
        year: str | None = None,
    ) -> None:
        self.class_names = list(VOC_CLASSES)
        self.folder = year_folder(root, year)
        self.channels = channels
        stems = _split_stems(self.folder, "Main", split)
        self.samples = _paired(self.folder, stems, "Annotations", ".xml")
        # every annotation is parsed now, so that a malformed one stops the run before training starts
        repairs = BoxRepairs()
        self.objects = []
        for image, xml in self.samples:
            boxes, labels, difficult, size = parse_annotation(xml, keep_difficult)
            width, height = size or header_size(image)
            self.objects.append(repairs.fit(boxes, width, height, labels, difficult))
        repairs.log(f"{self.folder / 'Annotations'} ({split} list)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image = read_image(self.samples[index][0], self.channels)
        boxes, labels, difficult = self.objects[index]
        # copies: a transform that changes a target in place must not change the stored annotations
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes), format="XYXY", canvas_size=tuple(image.shape[1:])
            ),
            "labels": torch.tensor(labels),
            "difficult": torch.tensor(difficult),
        }
        return tv_tensors.Image(image), target


def parse_annotation(
    path: Path, keep_difficult: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float] | None]:
    """The boxes (N, 4) float32 as 0-based XYXY (as written: not clipped), labels (N,) int64, difficult flags
    (N,) and image (width, height) of a VOC XML; the size is None where ``<size>`` is missing or 0."""
    try:
        root = ET.parse(path).getroot()
        objects = root.findall("object")
    except ET.ParseError as err:
        raise DatasetFormatError(
            f"{path} is not valid XML ({err}): replace it with the original file"
        ) from err
    boxes, labels, difficult = [], [], []
    for number, element in enumerate(objects, start=1):
        name = (element.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise DatasetFormatError(
                f"{path}: object {number} is named {name!r}, not one of the VOC classes "
                f"{', '.join(VOC_CLASSES)}"
            )
        try:
            xmin, ymin, xmax, ymax = (float(element.findtext(f"bndbox/{key}", "")) for key in BOX_KEYS)
        except ValueError as err:
            raise DatasetFormatError(
                f"{path}: object {number} ({name}) needs a bndbox with numbers {', '.join(BOX_KEYS)}"
            ) from err
        hard = (element.findtext("difficult") or "0").strip() == "1"
        if hard and not keep_difficult:
            continue
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        labels.append(VOC_CLASSES.index(name))
        difficult.append(hard)
    return (
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(labels, dtype=np.int64),
        np.array(difficult, dtype=bool),
        _annotated_size(root),
    )


def _annotated_size(annotation: ET.Element) -> tuple[float, float] | None:
    try:
        width, height = (float(annotation.findtext(f"size/{key}", "")) for key in ("width", "height"))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def year_folder(root: str | os.PathLike, year: str | None = None) -> Path:
    """The ``VOC<year>`` folder: ``root`` itself, or found in ``root`` or ``root/VOCdevkit``."""
    root = Path(root).expanduser()
    if (root / "JPEGImages").is_dir():
        return root
    # VOC2011's archive unpacks to TrainVal/VOCdevkit/VOC2011
    found = sorted(
        folder
        for parent in (root, root / "VOCdevkit", root / "TrainVal" / "VOCdevkit")
        if parent.is_dir()
        for folder in parent.glob(f"VOC{year or '*'}")
        if (folder / "JPEGImages").is_dir()
    )
    if len(found) == 1:
        return found[0]
    if found:
        years = ", ".join(folder.name.removeprefix("VOC") for folder in found)
        raise DatasetFormatError(f"{root} holds several VOC years ({years}): choose one with year=")
    wanted = f"VOC{year}" if year else "VOC<year>"
    raise DatasetNotFoundError(
        f"no Pascal VOC in {root}: expected {root}/VOCdevkit/{wanted}/JPEGImages (root may also name "
        f"VOCdevkit/ or {wanted}/ itself). {_instructions(root, year or '2012')}"
    )


def download(root: str | os.PathLike, year: str = "2012", split: str = "trainval") -> Path:
    """Download and unpack VOC ``year`` into ``root`` unless it is there; return its ``VOC<year>`` folder."""
    root = Path(root).expanduser()
    try:
        return year_folder(root, year)
    except DatasetNotFoundError:
        pass
    log.info("data: downloading Pascal VOC %s into %s", year, root)
    try:
        datasets.VOCDetection(str(root), year=year, image_set=split, download=True)
    except (OSError, RuntimeError) as err:
        detail = " ".join(str(err).split())
        raise DatasetNotFoundError(
            f"Pascal VOC {year} is not in {root} and downloading it failed ({type(err).__name__}: {detail}). "
            + _instructions(root, year, split)
        ) from err
    return year_folder(root, year)


def _instructions(root: Path, year: str, split: str = "trainval") -> str:
    release = DATASET_YEAR_DICT.get("2007-test" if (year, split) == ("2007", "test") else year)
    if release is None:
        return f"VOC years are {', '.join(sorted(DATASET_YEAR_DICT))}."
    return (
        f"Without internet access, fetch {release['url']} on another machine and unpack "
        f"{release['filename']} into {root}/ (it holds {release['base_dir']}/), or download it where the "
        "internet is reachable."
    )


def _split_stems(folder: Path, task: str, split: str) -> list[str]:
    lists = folder / "ImageSets" / task
    listing = lists / f"{split}.txt"
    if not listing.is_file():
        present = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
        raise DatasetNotFoundError(
            f"{listing} does not exist: split={split!r} needs it. Splits listed in {lists}: "
            f"{', '.join(present) or 'none'}"
        )
    stems = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not stems:
        raise DatasetFormatError(f"{listing} lists no images")
    return stems


def _paired(folder: Path, stems: list[str], target_dir: str, suffix: str) -> list[tuple[Path, Path]]:
    """(image, annotation) paths of the listed stems, after checking that every file exists."""
    samples = [(folder / "JPEGImages" / f"{s}.jpg", folder / target_dir / f"{s}{suffix}") for s in stems]
    missing = [path.relative_to(folder) for pair in samples for path in pair if not path.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} files listed by the split are missing from {folder}: "
            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}. Unpack the VOC archive "
            "again, or remove their names from the split list"
        )
    return samples


class VOCSegmentationDataModule(NamesAbsentClasses, ImageDataModule):
    """Pascal VOC's segmentation masks: the background and 20 classes, object borders ignored.

    The training pool is the ``train_split`` list (the run's seed carves validation from it), the test set the
    ``test_split`` list: VOC's test masks are not public, so its ``val`` list serves as the test.
    """

    targets = ("mask",)

    def __init__(
        self,
        root: str | os.PathLike,
        year: str | int | None = "2012",
        download: bool = True,
        train_split: str = "train",
        test_split: str = "val",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("num_classes", len(VOC_CLASSES) + 1)
        kwargs.setdefault("in_channels", 3)
        super().__init__(root=root, **kwargs)
        self.year = str(year) if year is not None else None
        self.allow_download = download
        self.splits = {"train": train_split, "test": test_split}
        self._set_class_names(["background", *VOC_CLASSES])

    def cache_dir(self) -> Path | None:
        assert self.root is not None
        return year_folder(self.root, self.year)

    def download(self) -> None:
        """Download and unpack VOC into ``root`` when it is missing and downloads are allowed."""
        assert self.root is not None
        if self.allow_download:
            download(self.root, self.year or "2012")

    def load_split(self, split: str) -> Dataset:
        assert self.root is not None
        name = self.splits[split]
        return VOCSegmentationFiles(self.root, name, self.in_channels, self.year, workers=self.num_workers)


class VOCDetectionDataModule(ImageDataModule):
    """Pascal VOC's object boxes: 20 classes, box labels 0-based indices of ``VOC_CLASSES``.

    Training uses the ``train_split`` list of ``ImageSets/Main``, testing the ``test_split`` list: VOC2012's
    test annotations are not public, so its ``val`` list serves as the test; VOC2007 has its own
    (``year=2007 test_split=test``, downloaded as a second archive). Validation is carved from the training
    images by the run's seed, or is the ``val_split`` list when one is named (``train_split=train
    val_split=val test_split=test`` on VOC2007).
    Difficult objects keep their ``difficult`` flag (the detection task ignores them) unless
    ``keep_difficult=false`` drops them when the annotations are read.
    """

    targets = ("boxes",)

    def __init__(
        self,
        root: str | os.PathLike,
        year: str | int | None = "2012",
        download: bool = True,
        train_split: str = "train",
        test_split: str = "val",
        val_split: str | None = None,
        keep_difficult: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("num_classes", len(VOC_CLASSES))
        kwargs.setdefault("in_channels", 3)
        super().__init__(root=root, **kwargs)
        self.year = str(year) if year is not None else None
        self.allow_download, self.keep_difficult = download, keep_difficult
        self.splits = {"train": train_split, "test": test_split, "val": val_split}
        self._set_class_names(VOC_CLASSES)

    def download(self) -> None:
        """Download and unpack VOC into ``root`` when it is missing and downloads are allowed."""
        assert self.root is not None
        if not self.allow_download:
            return
        year = self.year or "2012"
        folder = download(self.root, year)
        if year == "2007" and "test" in self.splits.values():
            if not (folder / "ImageSets" / "Main" / "test.txt").is_file():
                download_2007_test(self.root)

    def load_split(self, split: str) -> Dataset:
        assert self.root is not None
        name = self.splits[split]
        return VOCDetectionFiles(self.root, name, self.in_channels, self.keep_difficult, self.year)

    def own_validation(self) -> Dataset | None:
        return self.load_split("val") if self.splits["val"] else None


def download_2007_test(root: Path) -> None:
    """Download and unpack VOC2007's test archive (its own file) into ``root``."""
    log.info("data: downloading Pascal VOC 2007 test into %s", root)
    try:
        datasets.VOCDetection(str(root), year="2007", image_set="test", download=True)
    except (OSError, RuntimeError) as err:
        detail = " ".join(str(err).split())
        raise DatasetNotFoundError(
            f"VOC2007's test split is not in {root} and downloading it failed ({type(err).__name__}: "
            f"{detail}). " + _instructions(root, "2007", "test")
        ) from err
