"""MNIST, Fashion-MNIST and CIFAR-10, parsed and downloaded by torchvision's own dataset classes.

Each split is read once into a uint8 tensor (N, C, H, W) and served from memory, not as a PIL image per item.
The configs give the published normalisation statistics; computing them (when a config sets them to null)
takes seconds on these sizes, so nothing is cached. Offline, a missing dataset is a ``DatasetNotFoundError``
that names the files, the folder to put them in and the address to fetch them from.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.utils import extract_archive

from cnnlab.data.base import ImageDataModule, TensorImages
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError, dataset_not_found

log = logging.getLogger(__name__)

# URLError and socket errors are OSErrors; torchvision reports failed mirrors and checksums as RuntimeError
DOWNLOAD_ERRORS = (OSError, RuntimeError)
# what torchvision's parsers raise on truncated, corrupt or foreign files
PARSE_ERRORS = (
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    AssertionError,
    EOFError,
    pickle.UnpicklingError,
)


class TorchvisionDataModule(ImageDataModule):
    """The shared part of datamodules on a torchvision dataset class: download, offline errors, tensors."""

    dataset_class: ClassVar[type[datasets.VisionDataset]]

    def __init__(self, root: str | os.PathLike, download: bool = True, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.allow_download = download
        self._splits: dict[str, Dataset] = {}

    # --- what a subclass provides ------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        """The folder that holds the dataset's files once downloaded."""
        raise NotImplementedError

    def expected_files(self) -> list[str]:
        """The names of the files ``folder`` must hold."""
        raise NotImplementedError

    def instructions(self) -> str:
        """How to provide the files by hand: where to fetch them and where to put them."""
        raise NotImplementedError

    def extract_local_archives(self) -> None:
        """Unpack archives a user placed by hand, so a manual download works with data.download=false too."""

    def to_tensors(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of a parsed torchvision dataset as uint8 (N, C, H, W) and its labels as int64 (N,)."""
        raise NotImplementedError

    # --- the datamodule contract -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The dataset's name as torchvision spells it."""
        return self.dataset_class.__name__

    def download(self) -> None:
        """Download through torchvision unless the files are here; offline, raise what to do instead."""
        self.extract_local_archives()
        if self._files_present() or not self.allow_download:
            return  # missing files with download=false are reported by load_split, which runs on every rank
        log.info("data: downloading %s into %s", self.name, self.root)
        try:
            # download=True fetches both splits; parsing the test split, the smaller one, proves the download
            self.dataset_class(self.root, train=False, download=True)
        except DOWNLOAD_ERRORS as err:
            detail = " ".join(str(err).split())  # torchvision's report of failed mirrors spans many lines
            raise self._not_found(f"downloading it failed: {type(err).__name__}: {detail}") from err

    def load_split(self, split: str) -> Dataset:
        if not self._splits:
            self.extract_local_archives()
            if not self._files_present():
                reason = (
                    "data.download=false"
                    if not self.allow_download
                    else "not downloaded: call prepare_data()"
                )
                raise self._not_found(reason)
            (train, classes), (test, _) = self._read(train=True), self._read(train=False)
            self._set_class_names(classes)
            self._splits = {"train": train, "test": test}
        return self._splits[split]

    # --- helpers -----------------------------------------------------------------------------------------

    def _files_present(self) -> bool:
        return all((self.folder / name).is_file() for name in self.expected_files())

    def _not_found(self, reason: str) -> DatasetNotFoundError:
        online = (
            "Or run again where the internet is reachable: cnnlab downloads it then."
            if self.allow_download
            else "Or set data.download=true and run where the internet is reachable."
        )
        return dataset_not_found(
            self.name, self.folder, self.expected_files(), reason, f"{self.instructions()} {online}"
        )

    def _read(self, train: bool) -> tuple[TensorImages, list[str]]:
        try:
            parsed = self.dataset_class(self.root, train=train, download=False)
        except PARSE_ERRORS as err:
            raise DatasetFormatError(
                f"{self.name} in {self.folder} could not be read ({type(err).__name__}: {err}). The files "
                f"are truncated, corrupt or not the official release: delete them and download them again."
            ) from err
        images, labels = self.to_tensors(parsed)
        if len(images) != len(labels):
            split = "training" if train else "test"
            raise DatasetFormatError(
                f"{self.name}'s {split} files in {self.folder} hold {len(images)} images but {len(labels)} "
                "labels: one of them is truncated or from another release. Delete both and fetch them again."
            )
        return TensorImages(images, labels), [str(c) for c in parsed.classes]


class MNISTDataModule(TorchvisionDataModule):
    """MNIST handwritten digits: 60,000 training and 10,000 test images, 28 px, one channel."""

    dataset_class = datasets.MNIST

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("num_classes", 10)
        kwargs.setdefault("in_channels", 1)
        kwargs.setdefault("image_size", 28)
        super().__init__(**kwargs)

    @property
    def folder(self) -> Path:
        # torchvision's raw_folder: <root>/<dataset class name>/raw
        assert self.root is not None
        return self.root / self.dataset_class.__name__ / "raw"

    def expected_files(self) -> list[str]:
        return [name.removesuffix(".gz") for name in self._archives()]

    def instructions(self) -> str:
        mirrors = list(self.dataset_class.mirrors)  # type: ignore[attr-defined]
        archives = self._archives()
        return (
            f"Without internet access, fetch {', '.join(archives)} from {mirrors[0]}"
            + (f" (mirrors: {', '.join(mirrors[1:])})" if len(mirrors) > 1 else "")
            + f" and put them in {self.folder}/, gzipped as downloaded or unpacked (e.g. "
            f"{self.folder / archives[0]})."
        )

    def extract_local_archives(self) -> None:
        for name in self.expected_files():
            target, packed = self.folder / name, self.folder / f"{name}.gz"
            if not target.is_file() and packed.is_file():
                _gunzip(packed, target)

    def to_tensors(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()

    def _archives(self) -> list[str]:
        return [name for name, _md5 in self.dataset_class.resources]  # type: ignore[attr-defined]


class FashionMNISTDataModule(MNISTDataModule):
    """Zalando's Fashion-MNIST: ten kinds of clothing in MNIST's format, sizes and split."""

    dataset_class = datasets.FashionMNIST


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10: 50,000 training and 10,000 test colour images of ten classes, 32 px."""

    dataset_class = datasets.CIFAR10

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("num_classes", 10)
        kwargs.setdefault("in_channels", 3)
        kwargs.setdefault("image_size", 32)
        super().__init__(**kwargs)

    @property
    def folder(self) -> Path:
        assert self.root is not None
        return self.root / datasets.CIFAR10.base_folder

    def expected_files(self) -> list[str]:
        cls = datasets.CIFAR10
        return [name for name, _md5 in cls.train_list + cls.test_list] + [cls.meta["filename"]]

    def instructions(self) -> str:
        return (
            f"Without internet access, fetch {datasets.CIFAR10.url} on another machine and put it in "
            f"{self.root}/ (it is unpacked on the next run), or unpack it there yourself so that "
            f"{self.folder}/ holds the files above."
        )

    def extract_local_archives(self) -> None:
        assert self.root is not None
        archive = self.root / datasets.CIFAR10.filename
        if self._files_present() or not archive.is_file():
            return
        log.info("data: unpacking %s", archive)
        try:
            extract_archive(str(archive), str(self.root))
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DatasetFormatError(
                f"{archive} could not be unpacked ({err}): delete it and download it again"
            ) from err

    def to_tensors(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision keeps CIFAR as a numpy (N, H, W, C) array
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(dataset.targets, dtype=torch.long)


def _gunzip(packed: Path, target: Path) -> None:
    """Unpack ``packed`` to ``target`` all or nothing: a truncated file never passes for a complete one."""
    try:
        with gzip.open(packed, "rb") as source:
            data = source.read()
    except (OSError, EOFError) as err:
        raise DatasetFormatError(
            f"{packed} is not a complete gzip file ({err}): delete it and fetch it again"
        ) from err
    partial = target.with_name(f"{target.name}.tmp{os.getpid()}")
    partial.write_bytes(data)
    partial.replace(target)
