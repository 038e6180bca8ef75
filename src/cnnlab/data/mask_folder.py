"""Segmentation folders: ``root/images/*`` and ``root/masks/*.png`` paired by file stem.

A mask is a palette or greyscale PNG of class indices (255: ignore); with ``binary_masks``, a black-and-white
PNG (0 background, 255 the object, read as class 1). Class names come from the argument, else from
``root/classes.txt`` (line i names index i), else they are the indices "0".."K" up to the largest found.
Every mask is decoded once when the folder is opened (cached beside it), so a bad one stops a run before
training. ``MaskFolderDataModule`` serves such folders to the segmentation task.
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
from cnnlab.data.masks import NamesAbsentClasses, check_readable, check_size
from cnnlab.data.scan import scan_masks
from cnnlab.errors import ConfigError
from cnnlab.samples import IGNORE_INDEX

LAYOUT = {"images": IMG_EXTENSIONS, "masks": (".png",)}


class MaskFolder(Dataset):
    """Images with their class masks; ``class_names[i]`` names mask index i."""

    def __init__(
        self,
        root: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        channels: int = 3,
        binary_masks: bool = False,
        workers: int = 0,
    ) -> None:
        self.root = Path(root).expanduser()
        self.channels, self.binary_masks = channels, binary_masks
        images, masks = (_by_stem(self.root / name, suffixes) for name, suffixes in LAYOUT.items())
        _check_pairs(self.root, images, masks)
        self.samples = [(images[stem], masks[stem]) for stem in sorted(images)]
        facts = scan_masks(self.samples, self.root, workers)
        for image, mask in self.samples:
            check_readable(mask, image, facts[mask])
        values = [self._as_classes(facts[mask].values) for _, mask in self.samples]
        self.class_names: list[str] = self._class_names(class_names, values)
        self._check_values(values)
        #: the classes each mask holds (ignored pixels left out)
        self.mask_classes = [frozenset(held) - {IGNORE_INDEX} for held in values]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.channels)
        mask = read_mask(mask_path)
        if self.binary_masks:
            mask[mask == IGNORE_INDEX] = 1
        # checked at setup already: these catch a file replaced during the run
        check_size(mask_path, mask.shape, image_path, image.shape[1:])
        self._check_classes(mask_path, mask.unique().tolist())
        return tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)}

    @property
    def read_options(self) -> dict[str, Any]:
        """What changes the items read from the same files (the decoded cache's name holds it)."""
        return {"binary_masks": self.binary_masks}

    # --- helpers -----------------------------------------------------------------------------------------

    def _as_classes(self, values: Sequence[int]) -> tuple[int, ...]:
        """A mask's values as the classes they are read as (``binary_masks``: 255 is class 1)."""
        if not self.binary_masks:
            return tuple(values)
        return tuple(sorted({1 if v == IGNORE_INDEX else v for v in values}))

    def _class_names(self, given: Sequence[str] | None, values: Sequence[Sequence[int]]) -> list[str]:
        if given is not None:
            return [str(name) for name in given]
        listed = listed_names(self.root)
        if listed is not None:
            return listed
        # no names anywhere: as many classes as the largest index found (ignored pixels aside)
        labelled = [v for held in values for v in held if v != IGNORE_INDEX]
        return [str(i) for i in range(max(labelled, default=0) + 1)]

    def _check_values(self, values: Sequence[Sequence[int]]) -> None:
        """Refuse unknown class indices, and black-and-white masks read as background and ignored only."""
        names = self.class_names
        if self.binary_masks and len(names) != 2:
            raise ConfigError(
                "binary_masks=true reads black-and-white masks (0 background, 255 the object) as 2 "
                f"classes, but {self.root} has {len(names)} ({', '.join(names)}): set "
                "data.num_classes=2 with 2 names (in classes.txt or data.class_names), or "
                "data.binary_masks=false for masks of class indices"
            )
        for (_, mask), held in zip(self.samples, values, strict=True):
            self._check_classes(mask, held)
        found = set().union(*values)
        if not self.binary_masks and len(names) == 2 and found == {0, IGNORE_INDEX}:
            pairs = zip(self.samples, values, strict=True)
            example = next(mask for (_, mask), held in pairs if IGNORE_INDEX in held)
            named = f"class 1 ({names[1]})" if names[1] != "1" else "class 1"
            raise DatasetFormatError(
                f"the masks in {self.root / 'masks'} hold only the values 0 and {IGNORE_INDEX} "
                f"({example.name} among them), and {IGNORE_INDEX} is read as a pixel to ignore: no "
                f"pixel would be of {named}, and a run would learn the background alone. "
                "For black-and-white masks (0 background, 255 the object, as most labelling tools write "
                f"them) set data.binary_masks=true, which reads {IGNORE_INDEX} as class 1"
            )

    def _check_classes(self, path: Path, values: Sequence[int]) -> None:
        unknown = sorted(v for v in values if v >= len(self.class_names) and v != IGNORE_INDEX)
        if unknown:
            raise DatasetFormatError(
                f"{path} holds class indices {unknown} but there are {len(self.class_names)} "
                f"classes ({', '.join(self.class_names)}): fix the mask, or name every class (class_names or "
                f"{self.root / 'classes.txt'})"
                + ("; with data.binary_masks=true a mask holds 0 and 255 only" if self.binary_masks else "")
            )


def listed_names(root: Path) -> list[str] | None:
    """The class names in ``root/classes.txt`` (line i names index i); None when there is no such file."""
    listing = root / "classes.txt"
    if not listing.is_file():
        return None
    names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        raise DatasetFormatError(f"{listing} must name one class per line, with no blank lines")
    return names


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


class MaskFolderDataModule(NamesAbsentClasses, ImageDataModule):
    """Segmentation on any ``images/`` + ``masks/`` folder pair, classes named by ``class_names``, else by
    ``root/classes.txt``, else "0" to "num_classes - 1".

    A ``test_root`` of the same layout is the test set; without one, a fixed ``test_fraction`` of the images
    (the same in every run) is held out for testing. The run's seed carves validation from the rest.
    ``binary_masks`` reads black-and-white masks (0 background, 255 the object) as classes 0 and 1.
    """

    targets = ("mask",)

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        test_root: str | os.PathLike | None = None,
        test_fraction: float = 0.2,
        binary_masks: bool = False,
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
        if binary_masks and self.num_classes != 2:
            raise ConfigError(
                f"data.binary_masks=true reads black-and-white masks as 2 classes (0 background, 255 the "
                f"object) but data.num_classes={self.num_classes}: set data.num_classes=2, or "
                "data.binary_masks=false for masks of class indices"
            )
        self.binary_masks = bool(binary_masks)
        self.given_names = [str(name) for name in class_names] if class_names is not None else None
        self.test_root = Path(test_root).expanduser() if test_root is not None else None
        self.test_fraction = test_fraction
        self._pool: dict[str, Dataset] = {}

    def cache_dir(self) -> Path | None:
        return self.root

    def load_split(self, split: str) -> Dataset:
        if not self._pool:
            assert self.root is not None
            # the names first: a class count other than data.num_classes is named before any mask is read
            self._set_class_names(self._names())
            pool = self._folder(self.root)
            if self.test_root is not None:
                test = self._folder(self.test_root)
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

    def _folder(self, root: Path) -> MaskFolder:
        return MaskFolder(root, self.class_names, self.in_channels, self.binary_masks, self.num_workers)

    def _names(self) -> list[str]:
        """The configured names, else those of the folder's classes.txt, else the indices."""
        assert self.root is not None
        if self.given_names is not None:
            return self.given_names
        return listed_names(self.root) or [str(k) for k in range(self.num_classes)]
