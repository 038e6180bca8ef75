"""Segmentation folders: ``root/images/*`` and ``root/masks/*.png`` paired by file stem.

A mask is a palette or greyscale PNG of class indices (255: ignore). Class names come from the argument, else
from ``root/classes.txt`` (line i names index i), else they are the indices "0".."K" up to the largest found.
``MaskFolderDataModule`` serves such folders to the segmentation task.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnnlab.data.base import ImageDataModule
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.io import read_image, read_mask
from cnnlab.data.samples import IGNORE_INDEX
from cnnlab.errors import ConfigError

LAYOUT = {"images": IMG_EXTENSIONS, "masks": (".png",)}


class MaskFolder(Dataset):
    """Images with their class masks; ``class_names[i]`` names mask index i."""

    def __init__(
        self, root: str | os.PathLike, class_names: Sequence[str] | None = None, channels: int = 3
    ) -> None:
        self.root = Path(root).expanduser()
        self.channels = channels
        images, masks = (_by_stem(self.root / name, suffixes) for name, suffixes in LAYOUT.items())
        _check_pairs(self.root, images, masks)
        self.samples = [(images[stem], masks[stem]) for stem in sorted(images)]
        self.class_names: list[str] = self._class_names(class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.channels)
        mask = self._read_mask(mask_path)
        if mask.shape != image.shape[1:]:
            raise DatasetFormatError(
                f"{mask_path} is {tuple(mask.shape)} (H, W) but its image {image_path.name} is "
                f"{tuple(image.shape[1:])}: a mask must match its image"
            )
        return tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)}

    # --- helpers -----------------------------------------------------------------------------------------

    def _class_names(self, given: Sequence[str] | None) -> list[str]:
        if given is not None:
            return [str(name) for name in given]
        listing = self.root / "classes.txt"
        if listing.is_file():
            names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
            while names and not names[-1]:
                names.pop()
            if not names or not all(names):
                raise DatasetFormatError(f"{listing} must name one class per line, with no blank lines")
            return names
        # no names anywhere: every mask is read once to find how many classes there are
        largest = 0
        for _, mask_path in self.samples:
            mask = read_mask(mask_path)
            labelled = mask[mask != IGNORE_INDEX]
            largest = max(largest, int(labelled.max()) if labelled.numel() else 0)
        return [str(i) for i in range(largest + 1)]

    def _read_mask(self, path: Path) -> torch.Tensor:
        mask = read_mask(path)
        unknown = mask[(mask >= len(self.class_names)) & (mask != IGNORE_INDEX)].unique()
        if len(unknown):
            raise DatasetFormatError(
                f"{path} holds class indices {unknown.tolist()} but there are {len(self.class_names)} "
                f"classes ({', '.join(self.class_names)}): fix the mask, or name every class (class_names or "
                f"{self.root / 'classes.txt'})"
            )
        return mask


def _by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """The files of ``folder`` with one of ``suffixes``, by stem; two files of one stem are an error."""
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"{folder} does not exist: a mask folder holds images/ and masks/ (paired by file name)"
        )
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or path.name.startswith(".") or not path.is_file():
            continue
        if path.stem in found:
            raise DatasetFormatError(
                f"{found[path.stem].name} and {path.name} in {folder} share a name: keep one file per stem"
            )
        found[path.stem] = path
    if not found:
        raise DatasetFormatError(f"{folder} holds no files of types {', '.join(suffixes)}")
    return found


def _check_pairs(root: Path, images: dict[str, Path], masks: dict[str, Path]) -> None:
    for kind, have, lack in (("image", images, masks), ("mask", masks, images)):
        alone = sorted(have.keys() - lack.keys())
        if alone:
            other = "masks" if kind == "image" else "images"
            names = ", ".join(have[stem].name for stem in alone[:5]) + (" ..." if len(alone) > 5 else "")
            raise DatasetNotFoundError(
                f"{len(alone)} {kind}s in {root} have no {other[:-1]} of the same name in {root / other}: "
                f"{names}"
            )


class MaskFolderDataModule(ImageDataModule):
    """Segmentation on any ``images/`` + ``masks/`` folder pair, classes named by ``class_names``, else by
    ``root/classes.txt``, else "0" to "num_classes - 1".

    A ``test_root`` of the same layout is the test set; without one, a fixed ``test_fraction`` of the images
    (the same in every run) is held out for testing. The run's seed carves validation from the rest.
    """

    targets = ("mask",)

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        test_root: str | os.PathLike | None = None,
        test_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        # the config leaves both to the user (???), which Hydra then passes as nothing at all
        if root is None or num_classes is None:
            raise ConfigError(
                "data=mask_folder needs data.root (the folder holding images/ and masks/) and "
                "data.num_classes (every class, background included: the lines of classes.txt), e.g. "
                "data.root=~/data/roads data.num_classes=3"
            )
        kwargs.setdefault("in_channels", 3)
        super().__init__(root=root, num_classes=num_classes, **kwargs)
        if test_root is None and not 0.0 < test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        self.given_names = [str(name) for name in class_names] if class_names is not None else None
        self.test_root = Path(test_root).expanduser() if test_root is not None else None
        self.test_fraction = test_fraction
        self._pool: dict[str, Dataset] = {}

    def load_split(self, split: str) -> Dataset:
        if not self._pool:
            assert self.root is not None
            pool = MaskFolder(self.root, self._names(), channels=self.in_channels)
            self._set_class_names(pool.class_names)
            if self.test_root is not None:
                test = MaskFolder(self.test_root, pool.class_names, channels=self.in_channels)
                self._pool = {"train": pool, "test": test}
            else:
                order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0)).tolist()
                n_test = max(1, round(len(pool) * self.test_fraction))
                if len(pool) - n_test < 2:
                    raise ConfigError(
                        f"{self.root} holds {len(pool)} images: too few to hold out "
                        f"data.test_fraction={self.test_fraction} for testing and still train and validate"
                    )
                self._pool = {"test": Subset(pool, order[:n_test]), "train": Subset(pool, order[n_test:])}
        return self._pool[split]

    def _names(self) -> list[str] | None:
        """The configured names; None lets the folder's classes.txt name them; else the indices."""
        assert self.root is not None
        if self.given_names is not None:
            return self.given_names
        if (self.root / "classes.txt").is_file():
            return None
        return [str(k) for k in range(self.num_classes)]
