"""Photos in class folders (``root/{train,test}/<class>/*.jpg``) and the course's landmark dataset on them.

Parsing uses torchvision's ``make_dataset``; the validation split is carved from ``train/`` by the base.
Normalisation statistics take a pass over every training photo, so they are cached in a JSON file beside
the data (when the folder is writable).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset
from torchvision.datasets.utils import download_and_extract_archive

from cnnlab.data.base import ImageDataModule
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.io import read_image

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


class ImageFiles(Dataset):
    """(image tensor, label) items read from a list of (path, label) pairs, at every bit depth."""

    def __init__(self, samples: list[tuple[str, int]], channels: int) -> None:
        self.samples, self.channels = samples, channels
        self.labels = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return read_image(path, self.channels), label


class ImageFolderDataModule(ImageDataModule):
    """Any photo dataset laid out as ``root/train/<class>/*`` and ``root/test/<class>/*``."""

    # where the dataset can be fetched from, named in the errors that report it missing; None: nowhere
    url: str | None = None

    def __init__(self, root: str | os.PathLike, **kwargs: Any) -> None:
        kwargs.setdefault("in_channels", 3)
        super().__init__(root=root, **kwargs)
        if self.in_channels not in (1, 3):
            raise ValueError(
                f"data.in_channels must be 1 (greyscale) or 3 (RGB) for photos, got {self.in_channels}"
            )
        self.mode = "L" if self.in_channels == 1 else "RGB"
        self._splits: dict[str, Dataset] = {}

    def dataset_dir(self) -> Path:
        """The folder that holds ``train/`` and ``test/``."""
        assert self.root is not None
        return self.root

    def display_name(self, folder: str) -> str:
        """The class name shown to people for a class folder's name."""
        return folder

    def load_split(self, split: str) -> Dataset:
        if not self._splits:
            self._splits = self._scan()
        return self._splits[split]

    def stats_cache(self) -> Path | None:
        folder = self.dataset_dir()
        if not os.access(folder, os.W_OK):
            log.info("data: %s is read-only, so normalisation statistics are computed every run", folder)
            return None
        # one file per channel mode: the base's cache key does not tell greyscale from RGB statistics
        return folder / f".cnnlab_stats_{self.mode}.json"

    # --- helpers -----------------------------------------------------------------------------------------

    def _scan(self) -> dict[str, Dataset]:
        folder = self.dataset_dir()
        layout = f"expected {folder}/train/<class>/<image> and {folder}/test/<class>/<image>"
        if not folder.is_dir():
            raise self._not_found(f"the dataset folder {folder} does not exist ({layout})")
        for split in SPLITS:
            if not (folder / split).is_dir():
                raise self._not_found(f"{folder} has no {split}/ folder ({layout})")
        classes = {split: _class_folders(folder / split) for split in SPLITS}
        for split in SPLITS:
            if not classes[split]:
                raise DatasetFormatError(f"{folder / split} has no class folders ({layout})")
        if classes["train"] != classes["test"]:
            only_train = sorted(set(classes["train"]) - set(classes["test"]))
            only_test = sorted(set(classes["test"]) - set(classes["train"]))
            raise DatasetFormatError(
                f"train/ and test/ in {folder} must hold the same class folders; only in train/: "
                f"{only_train or 'none'}; only in test/: {only_test or 'none'}"
            )
        self._set_class_names([self.display_name(name) for name in classes["train"]])
        class_to_idx = {name: i for i, name in enumerate(classes["train"])}
        return {
            split: ImageFiles(self._samples(folder / split, class_to_idx), self.in_channels)
            for split in SPLITS
        }

    def _samples(self, split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        samples = make_dataset(str(split_dir), class_to_idx, is_valid_file=_is_image, allow_empty=True)
        counts = Counter(label for _, label in samples)
        empty = [name for name, i in class_to_idx.items() if counts[i] == 0]
        if empty:
            raise DatasetFormatError(
                f"these class folders in {split_dir} hold no images: {', '.join(empty)}. Add images "
                f"({', '.join(IMG_EXTENSIONS)}) or remove the folders from both train/ and test/"
            )
        return samples

    def _not_found(self, problem: str) -> DatasetNotFoundError:
        assert self.root is not None
        hint = (
            f" Download {self.url} and unzip it into {self.root}, or run with data.download=true where the "
            "internet is reachable."
            if self.url
            else " Check data.root."
        )
        return DatasetNotFoundError(problem + "." + hint)


class LandmarksDataModule(ImageFolderDataModule):
    """The course's 50 landmarks: ``landmark_images/{train,test}/NN.Name/*.jpg``, downloaded when missing."""

    url = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
    folder_name = "landmark_images"

    def __init__(self, root: str | os.PathLike, download: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("num_classes", 50)
        kwargs.setdefault("image_size", 224)
        kwargs.setdefault("resize_size", 256)
        super().__init__(root=root, **kwargs)
        self.allow_download = download

    def dataset_dir(self) -> Path:
        # root may name the folder that holds landmark_images/ or landmark_images/ itself
        assert self.root is not None
        inside = self.root / self.folder_name
        if not inside.is_dir() and (self.root / "train").is_dir():
            return self.root
        return inside

    def display_name(self, folder: str) -> str:
        return landmark_name(folder)

    def download(self) -> None:
        """Download and unzip the archive when the images are missing (reusing an archive in root)."""
        assert self.root is not None
        archive = self.root / Path(self.url).name
        if self.dataset_dir().is_dir() or not (self.allow_download or archive.is_file()):
            return  # with nothing to unzip and download=false, load_split reports what is missing
        existed = archive.is_file()
        log.info("data: %s %s into %s", "unzipping" if existed else "downloading", archive.name, self.root)
        try:
            # download_url skips the download when the archive is already there (no checksum is published)
            download_and_extract_archive(self.url, str(self.root), filename=archive.name)
        except zipfile.BadZipFile as err:
            raise DatasetFormatError(
                f"{archive} is not a complete zip file: delete it and run again"
            ) from err
        except (OSError, RuntimeError) as err:
            if not existed:
                archive.unlink(missing_ok=True)  # a partial download would otherwise pass for the archive
            raise self._not_found(
                f"the landmark images are not in {self.root} and downloading them failed "
                f"({type(err).__name__}: {err})"
            ) from err


def landmark_name(folder: str) -> str:
    """A landmark folder's name for people: ``00.Haleakala_National_Park`` -> ``Haleakala National Park``."""
    return re.sub(r"^\d+\.", "", folder).replace("_", " ")


def count_class_folders(root: str | os.PathLike) -> int:
    """The number of class folders in ``root/train``: ``data.num_classes`` of a photo folder, by default."""
    train = Path(root).expanduser() / "train"
    if not train.is_dir():
        raise DatasetNotFoundError(
            f"cannot count the classes: {train} does not exist. data.root must hold train/<class>/ and "
            "test/<class>/ folders; or set data.num_classes"
        )
    count = len(_class_folders(train))
    if count == 0:
        raise DatasetFormatError(f"cannot count the classes: {train} has no class folders")
    return count


def _class_folders(split_dir: Path) -> list[str]:
    # hidden folders are tool litter (Jupyter's .ipynb_checkpoints, macOS metadata), never classes
    return sorted(
        entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith(".")
    )


def _is_image(path: str) -> bool:
    # macOS zips carry "._name.jpg" resource forks that look like images and are not
    return has_file_allowed_extension(path, IMG_EXTENSIONS) and not os.path.basename(path).startswith(".")
