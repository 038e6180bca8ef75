"""Photos in class folders (``root/{train,test}/<class>/*.jpg``) and the course's landmark dataset on them.

Parsing uses torchvision's ``make_dataset``; the validation split is carved from ``train/`` by the base.
Normalisation statistics take a pass over every training photo, so they are cached in a JSON file beside
the data (when the folder is writable).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets.utils import download_and_extract_archive

from cnnlab.data.base import ImageDataModule
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.io import read_image
from cnnlab.data.scan import IMAGE_EXTENSIONS, scan_images

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
BAD_FILE_POLICIES = ("skip", "error")


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
    """Photos in ``root/train/<class>/*`` beside ``test/<class>/*`` and/or ``val/<class>/*``.

    With ``val/``, that folder is the validation split (nothing is carved from ``train/``); without ``test/``,
    ``val/`` is the test split too. Every file is checked at setup (``cnnlab.data.scan``): with
    ``bad_files="skip"`` the unreadable ones are left out and listed (``bad_files``, and bad_files.txt in the
    run folder), with ``"error"`` the first stops the run before it starts.
    """

    # where the dataset can be fetched from, named in the errors that report it missing; None: nowhere
    url: str | None = None

    def __init__(self, root: str | os.PathLike, bad_files: str = "skip", **kwargs: Any) -> None:
        kwargs.setdefault("in_channels", 3)
        super().__init__(root=root, **kwargs)
        if self.in_channels not in (1, 3):
            raise ValueError(
                f"data.in_channels must be 1 (greyscale) or 3 (RGB) for photos, got {self.in_channels}"
            )
        if bad_files not in BAD_FILE_POLICIES:
            raise ValueError(f"data.bad_files={bad_files!r}: choose {' or '.join(BAD_FILE_POLICIES)}")
        self.bad_files_policy = bad_files
        #: (file, reason) of every file left out, for the log and the run folder's bad_files.txt
        self.bad_files: list[tuple[str, str]] = []
        self.mode = "L" if self.in_channels == 1 else "RGB"
        self._splits: dict[str, Dataset] = {}
        self._fingerprint = ""

    def dataset_dir(self) -> Path:
        """The folder that holds ``train/`` and ``test/`` or ``val/``."""
        assert self.root is not None
        return self.root

    def display_name(self, folder: str) -> str:
        """The class name shown to people for a class folder's name."""
        return folder

    def load_split(self, split: str) -> Dataset:
        if not self._splits:
            self._splits = self._scan()
        return self._splits[split]

    def own_validation(self) -> Dataset | None:
        self.load_split("train")
        return self._splits.get("val")

    def stats_cache(self) -> Path | None:
        folder = self.dataset_dir()
        if not os.access(folder, os.W_OK):
            log.info("data: %s is read-only, so normalisation statistics are computed every run", folder)
            return None
        # one file per channel mode: the base's cache key does not tell greyscale from RGB statistics
        return folder / f".cnnlab_stats_{self.mode}.json"

    def cache_dir(self) -> Path | None:
        return self.dataset_dir()

    def stats_fingerprint(self, train: Dataset) -> str:
        # the files themselves (names, sizes, times): replacing the images changes the statistics' key
        return self._fingerprint

    # --- helpers -----------------------------------------------------------------------------------------

    def _scan(self) -> dict[str, Dataset]:
        folder = self.dataset_dir()
        layout = (
            f"expected {folder}/train/<class>/<image> beside {folder}/test/<class>/<image> and/or "
            f"{folder}/val/<class>/<image>"
        )
        if not folder.is_dir():
            raise self._not_found(f"the dataset folder {folder} does not exist ({layout})")
        if not (folder / "train").is_dir():
            raise self._not_found(f"{folder} has no train/ folder ({layout})")
        present = [split for split in SPLITS if (folder / split).is_dir()]
        if present == ["train"]:
            raise self._not_found(
                f"{folder} has a train/ folder but no test/ or val/ folder beside it ({layout})"
            )
        classes = {split: _class_folders(folder / split) for split in present}
        for split in present:
            if not classes[split]:
                raise DatasetFormatError(f"{folder / split} has no class folders ({layout})")
            if classes[split] != classes["train"]:
                only_train = sorted(set(classes["train"]) - set(classes[split]))
                only_here = sorted(set(classes[split]) - set(classes["train"]))
                raise DatasetFormatError(
                    f"train/ and {split}/ in {folder} must hold the same class folders; only in train/: "
                    f"{only_train or 'none'}; only in {split}/: {only_here or 'none'}"
                )
        self._set_class_names([self.display_name(name) for name in classes["train"]])
        class_to_idx = {name: i for i, name in enumerate(classes["train"])}
        samples = self._checked_samples(folder, present, class_to_idx)
        splits = {split: ImageFiles(samples[split], self.in_channels) for split in present}
        if "test" not in splits:
            log.info("data: %s has no test/ folder: val/ is the validation split and the test split", folder)
            splits["test"] = splits["val"]
        return splits

    def _checked_samples(
        self, folder: Path, present: list[str], class_to_idx: dict[str, int]
    ) -> dict[str, list[tuple[str, int]]]:
        """The readable (path, label) pairs of each split, every other file recorded with its reason."""
        candidates: dict[str, list[tuple[Path, int]]] = {}
        loose: list[Path] = []
        for split in present:
            candidates[split] = []
            for entry in sorted(os.scandir(folder / split), key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue  # tool litter (.ipynb_checkpoints, macOS ._ forks), never data
                if entry.is_dir():
                    label = class_to_idx[entry.name]
                    candidates[split] += [(path, label) for path in _files(Path(entry.path))]
                else:
                    loose.append(Path(entry.path))
        checks = scan_images([p for split in present for p, _ in candidates[split]], folder, self.num_workers)
        bad = [(str(p), "not in a class folder: images go in <split>/<class>/") for p in loose]
        bad += [
            (str(p), checks[p].reason) for split in present for p, _ in candidates[split] if not checks[p].ok
        ]
        self._report_bad(bad)
        samples = {
            split: [(str(p), label) for p, label in candidates[split] if checks[p].ok] for split in present
        }
        for split in present:
            counts = Counter(label for _, label in samples[split])
            empty = [name for name, i in class_to_idx.items() if counts[i] == 0]
            if empty:
                raise DatasetFormatError(
                    f"these class folders in {folder / split} hold no readable images: {', '.join(empty)}. "
                    f"Add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the folders from every split"
                )
        train_keys = sorted(
            (str(p.relative_to(folder)), *p.stat()[6:9:2]) for p, _ in candidates["train"] if checks[p].ok
        )
        self._fingerprint = hashlib.sha1(json.dumps(train_keys).encode()).hexdigest()[:16]
        return samples

    def _report_bad(self, bad: list[tuple[str, str]]) -> None:
        self.bad_files = bad
        if not bad:
            return
        if self.bad_files_policy == "error":
            path, reason = bad[0]
            raise DatasetFormatError(
                f"{path}: {reason} ({len(bad)} bad file{'s' if len(bad) > 1 else ''} in all). Remove or "
                "replace it, or set data.bad_files=skip to train without such files (they are then listed in "
                "the run folder's bad_files.txt)"
            )
        listed = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        log.warning("data: skipped %d bad file(s) (data.bad_files=skip): %s%s", len(bad), listed, more)

    def _not_found(self, problem: str) -> DatasetNotFoundError:
        assert self.root is not None
        online = (
            "or run again where the internet is reachable: cnnlab downloads it then"
            if getattr(self, "allow_download", False)
            else "or set data.download=true and run where the internet is reachable"
        )
        hint = (
            f" Without internet access, fetch {self.url} on another machine and put the zip in {self.root} "
            f"(it is unzipped on the next run) or unzip it there yourself; {online}."
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


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder``, hidden ones (tool litter, macOS resource forks) left out."""
    found = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent) / name for name in sorted(names) if not name.startswith(".")]
    return found


def folder_image_size(root: str | os.PathLike, cap: int = 224) -> int:
    """The training images' own size: the median of their shorter sides, at most ``cap`` (a usual input).

    A folder of 32 px photos then trains at 32 px, not upsampled to 224 px (about 50 times the compute).
    """
    train = Path(root).expanduser() / "train"
    if not train.is_dir():
        raise DatasetNotFoundError(
            f"cannot measure the images: {train} does not exist. data.root must hold train/<class>/ "
            "folders; or set data.image_size"
        )
    files = [p for c in _class_folders(train) for p in _files(train / c)]
    checks = scan_images(files, Path(root).expanduser())
    sides = sorted(min(c.width, c.height) for c in checks.values() if c.ok)
    if not sides:
        raise DatasetFormatError(f"cannot measure the images: {train} holds no readable images")
    size = min(sides[len(sides) // 2], cap)
    log.info(
        "data: the training images' median shorter side is %d px: data.image_size=%d",
        sides[len(sides) // 2],
        size,
    )
    return size
