"""MVTec AD, one category folder as distributed: ``train/good/*.png``, ``test/good/*.png``,
``test/<defect>/*.png`` and ``ground_truth/<defect>/<stem>_mask.png`` (white = defect).

Training images are all defect-free. A test image's label is 0 for good and 1.. for the defect types in
sorted order; its mask marks the defect pixels (1), all zeros for good images and where a mask is missing.
``MVTecDataModule`` serves a category to the anomaly and autoencoder tasks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets.utils import download_and_extract_archive

from cnnlab.data.base import ImageDataModule
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.io import read_image, read_mask

log = logging.getLogger(__name__)

URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
    "mvtec_anomaly_detection.tar.xz"
)
ARCHIVE = "mvtec_anomaly_detection.tar.xz"
SPLITS = ("train", "test")
GOOD = "good"


class MVTecAD(Dataset):
    """The train or test images of one MVTec AD category, with anomaly flag, defect label and defect mask."""

    def __init__(self, root: str | os.PathLike, split: str = "train", channels: int = 3) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: MVTec AD has the splits {', '.join(SPLITS)}")
        self.root = Path(root).expanduser()
        self.channels = channels
        _check_category(self.root)
        test = self.root / "test"
        defects = (
            sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != GOOD) if test.is_dir() else []
        )
        #: 0 is ``good``, k the k-th defect type in sorted order
        self.class_names: list[str] = [GOOD, *defects]
        kinds = [GOOD] if split == "train" else self.class_names
        folder = self.root / split
        if not (folder / GOOD).is_dir():
            raise DatasetNotFoundError(
                f"{folder / GOOD} does not exist: an MVTec AD category holds train/good/ and test/good/"
            )
        self.samples: list[tuple[Path, int, Path | None]] = []
        missing: list[str] = []
        for label, kind in enumerate(kinds):
            for image in _pngs(folder / kind):
                mask = self.root / "ground_truth" / kind / f"{image.stem}_mask.png"
                if label and not mask.is_file():
                    missing.append(str(mask.relative_to(self.root)))
                self.samples.append((image, label, mask if label and mask.is_file() else None))
        if not self.samples:
            raise DatasetFormatError(f"{folder} holds no PNG images in {', '.join(f'{k}/' for k in kinds)}")
        self.has_masks: bool = (self.root / "ground_truth").is_dir()
        if missing:
            # masks are optional: such images still count for image-level scores
            log.warning(
                "data: %d defect images in %s have no mask (their masks are all zeros): %s%s",
                len(missing),
                self.root,
                ", ".join(missing[:5]),
                " ..." if len(missing) > 5 else "",
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image_path, label, mask_path = self.samples[index]
        image = read_image(image_path, self.channels)
        if mask_path is not None:
            mask = (read_mask(mask_path) > 0).to(torch.int64)
            if mask.shape != image.shape[1:]:
                raise DatasetFormatError(
                    f"{mask_path} is {tuple(mask.shape)} (H, W) but its image {image_path} is "
                    f"{tuple(image.shape[1:])}: a mask must match its image"
                )
        else:
            mask = torch.zeros(image.shape[1:], dtype=torch.int64)
        target = {"anomaly": int(label > 0), "label": label, "mask": tv_tensors.Mask(mask)}
        return tv_tensors.Image(image), target


def download(root: str | os.PathLike) -> Path:
    """Download and unpack the whole dataset (every category) into ``root`` unless a category is there."""
    root = Path(root).expanduser()
    if _categories(root):
        return root
    archive = root / ARCHIVE
    existed = archive.is_file()
    log.info("data: %s %s into %s", "unpacking" if existed else "downloading", ARCHIVE, root)
    try:
        download_and_extract_archive(URL, str(root), filename=ARCHIVE)
    except (OSError, RuntimeError, EOFError) as err:
        if not existed:
            archive.unlink(missing_ok=True)  # a partial download would otherwise pass for the archive
        detail = " ".join(str(err).split())
        raise DatasetNotFoundError(
            f"MVTec AD is not in {root} and downloading it failed ({type(err).__name__}: {detail}). "
            f"Without internet access, fetch {URL} on another machine and unpack {ARCHIVE} into {root}/. "
            "The archive holds every category (bottle/, cable/, ...); root must then name one category "
            f"folder, e.g. {root / 'bottle'}"
        ) from err
    return root


def _check_category(root: Path) -> None:
    if (root / "train").is_dir() or (root / "test").is_dir():
        return
    categories = _categories(root)
    if categories:
        raise DatasetNotFoundError(
            f"{root} holds the categories {', '.join(categories)}, not one category: root must name one "
            f"category folder, e.g. {root / categories[0]}"
        )
    raise DatasetNotFoundError(
        f"{root} is not an MVTec AD category folder: expected {root}/train/good/*.png, "
        f"{root}/test/<defect>/*.png and {root}/ground_truth/<defect>/*_mask.png. The dataset is {URL} "
        f"({ARCHIVE}: every category in one archive); unpack it and name one category folder, e.g. "
        ".../mvtec_anomaly_detection/bottle"
    )


def _categories(folder: Path) -> list[str]:
    """The category folders (those with ``train/good/``) directly in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "train" / GOOD).is_dir())


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith(".")) if folder.is_dir() else []


class WithoutMasks(Dataset):
    """The items of ``source`` without ``mask``: a category without ``ground_truth/`` has no pixel truth."""

    def __init__(self, source: Dataset) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.source[index]
        return image, {k: v for k, v in target.items() if k != "mask"}


class MVTecDataModule(ImageDataModule):
    """One MVTec AD category for anomaly detection: training on ``train/good`` (validation carved from it),
    testing on ``test/`` (good and defect images, with defect masks where ``ground_truth/`` has them).

    ``val_from_test`` moves that fraction of each kind of test image (good and every defect type; the same
    images in every run) to validation instead, so that validation holds defects: AUROC can then pick the
    checkpoint and the threshold is the F1-best one. ``root`` names the category folder (``.../bottle``);
    when it is missing and ``download`` is true, the whole dataset is downloaded into its parent folder.
    Class 0 is ``good``, class k the k-th defect type.
    """

    targets = ("anomaly", "label", "mask")

    def __init__(
        self, root: str | os.PathLike, download: bool = True, val_from_test: float = 0.0, **kwargs: Any
    ) -> None:
        # the number of defect types is read from the folder (setup); until then one class, good
        kwargs.setdefault("num_classes", 1)
        kwargs.setdefault("in_channels", 3)
        kwargs.setdefault("image_size", 256)
        super().__init__(root=root, **kwargs)
        if not 0.0 <= val_from_test < 1.0:
            raise ValueError(
                f"data.val_from_test={val_from_test}: give the fraction of test images moved to validation, "
                "at least 0 (none: validation comes from train/good) and below 1"
            )
        self.allow_download, self.val_from_test = download, val_from_test
        self._splits: dict[str, Dataset] = {}

    @classmethod
    def provides(cls, normal_classes: Sequence[int] | None = None) -> tuple[str, ...]:
        """Anomaly flags: the defect types and masks exist for test images only (every training image is
        good), so they serve evaluation and figures, never a classifier or a segmenter."""
        return ("anomaly",)

    def download(self) -> None:
        """Download and unpack MVTec AD into the parent of ``root`` when the category is missing."""
        assert self.root is not None
        if self.allow_download and not (self.root / "train").is_dir():
            download(self.root.parent)

    def load_split(self, split: str) -> Dataset:
        if not self._splits:
            self._splits = self._read()
        return self._splits[split]

    def own_validation(self) -> Dataset | None:
        return self._splits.get("val")

    def cache_dir(self) -> Path | None:
        return self.root

    def _read(self) -> dict[str, Dataset]:
        assert self.root is not None
        train = MVTecAD(self.root, "train", channels=self.in_channels)
        test = MVTecAD(self.root, "test", channels=self.in_channels)
        self.num_classes = len(test.class_names)
        self._set_class_names(test.class_names)
        splits: dict[str, Dataset] = {"train": train, "test": test}
        if self.val_from_test:
            val, kept = _stratified(
                [label for _, label, _ in test.samples], self.val_from_test, torch.Generator().manual_seed(0)
            )
            splits.update(test=Subset(test, kept), val=Subset(test, val))
        return splits if test.has_masks else {k: WithoutMasks(v) for k, v in splits.items()}


def _stratified(
    labels: list[int], fraction: float, generator: torch.Generator
) -> tuple[list[int], list[int]]:
    """Indices split into (``fraction`` of each label, the rest); a label with 2 or more items gives one."""
    picked: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        count = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        order = torch.randperm(len(members), generator=generator)[:count].tolist()
        picked += [members[i] for i in order]
    chosen = set(picked)
    return sorted(picked), [i for i in range(len(labels)) if i not in chosen]
