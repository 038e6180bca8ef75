"""The Penn-Fudan pedestrian database as distributed: ``PennFudanPed/PNGImages/<name>.png`` and
``PennFudanPed/PedMasks/<name>_mask.png``.

A mask holds one id per pedestrian (0 is the background, 1..N the people), from which each person's binary
mask and tight box follow; ``Annotation/*.txt`` repeats those boxes and is not read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.ops import masks_to_boxes

from cnnlab.data.base import ImageDataModule
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError, dataset_not_found
from cnnlab.data.io import read_image, read_mask
from cnnlab.data.samples import BoxLabelsAfterBackground

log = logging.getLogger(__name__)

URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
FOLDER = "PennFudanPed"
LAYOUT = ("PNGImages", "PedMasks")


class PennFudanPed(Dataset):
    """170 street photos with a box, a mask and the label ``person`` (0) for each pedestrian."""

    def __init__(self, root: str | os.PathLike, channels: int = 3) -> None:
        #: the object classes: ``labels`` index this list
        self.class_names = ["person"]
        #: the mask classes: 0 background, 1 person
        self.segmentation_class_names = ["background", "person"]
        self.folder = dataset_folder(root)
        self.channels = channels
        images = sorted(p for p in (self.folder / "PNGImages").glob("*.png") if not p.name.startswith("."))
        if not images:
            raise DatasetFormatError(f"{self.folder / 'PNGImages'} holds no PNG images")
        self.samples = [(image, self.folder / "PedMasks" / f"{image.stem}_mask.png") for image in images]
        missing = [mask.name for _, mask in self.samples if not mask.is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} of {len(images)} images have no mask in {self.folder / 'PedMasks'}: "
                f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Each "
                "PNGImages/<name>.png needs PedMasks/<name>_mask.png: unzip the archive again"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.channels)
        ids = read_mask(mask_path)
        if ids.shape != image.shape[1:]:
            raise DatasetFormatError(
                f"{mask_path} is {tuple(ids.shape)} (H, W) but its image {image_path.name} is "
                f"{tuple(image.shape[1:])}: the mask must match its image"
            )
        people = ids.unique()
        people = people[people != 0]
        instances = ids[None] == people[:, None, None]
        # masks_to_boxes gives the last covered pixel; its far edge is one further, as in COCO's boxes
        boxes = masks_to_boxes(instances) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        target = {
            "mask": tv_tensors.Mask((ids > 0).to(torch.int64)),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(ids.shape)),
            "labels": torch.zeros(len(people), dtype=torch.int64),
            "instance_masks": tv_tensors.Mask(instances.to(torch.uint8)),
        }
        return tv_tensors.Image(image), target


def dataset_folder(root: str | os.PathLike) -> Path:
    """The folder that holds ``PNGImages/`` and ``PedMasks/``: ``root`` itself or ``root/PennFudanPed``."""
    root = Path(root).expanduser()
    for folder in (root, root / FOLDER):
        if all((folder / name).is_dir() for name in LAYOUT):
            return folder
    raise dataset_not_found(
        "Penn-Fudan",
        root / FOLDER,
        [f"{name}/" for name in LAYOUT],
        "no PNGImages/ and PedMasks/ folders",
        _instructions(root),
    )


def download(root: str | os.PathLike) -> Path:
    """Download and unzip the database into ``root`` unless it is there; return the dataset folder."""
    root = Path(root).expanduser()
    try:
        return dataset_folder(root)
    except DatasetNotFoundError:
        pass
    archive = root / Path(URL).name
    existed = archive.is_file()
    log.info("data: %s %s into %s", "unzipping" if existed else "downloading", archive.name, root)
    try:
        download_and_extract_archive(URL, str(root), filename=archive.name)
    except (OSError, RuntimeError) as err:
        if not existed:
            archive.unlink(missing_ok=True)  # a partial download would otherwise pass for the archive
        raise dataset_not_found(
            "Penn-Fudan",
            root / FOLDER,
            [f"{name}/" for name in LAYOUT],
            f"downloading it failed: {type(err).__name__}: {err}",
            _instructions(root),
        ) from err
    return dataset_folder(root)


def _instructions(root: Path) -> str:
    return (
        f"Without internet access, fetch {URL} on another machine and unzip {Path(URL).name} into {root}/ "
        f"(it unpacks to {root / FOLDER}/PNGImages and PedMasks), or download it where the internet is "
        "reachable."
    )


class PennFudanDataModule(ImageDataModule):
    """Penn-Fudan pedestrians for segmentation (person vs background) and detection (a box per person).

    Class 0 is the background, class 1 a person, in masks and box labels alike. The database has no splits:
    a fixed ``test_fraction`` (the same images in every run) is held out for testing; the run's seed carves
    validation from the rest.
    """

    targets = ("mask", "boxes")

    def __init__(
        self, root: str | os.PathLike, download: bool = True, test_fraction: float = 0.2, **kwargs: Any
    ) -> None:
        kwargs.setdefault("num_classes", 2)
        kwargs.setdefault("in_channels", 3)
        super().__init__(root=root, **kwargs)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        self.allow_download, self.test_fraction = download, test_fraction
        self._pool: dict[str, Dataset] = {}

    def download(self) -> None:
        """Download and unzip the database into ``root`` when it is missing and downloads are allowed."""
        assert self.root is not None
        if self.allow_download:
            download(self.root)

    def load_split(self, split: str) -> Dataset:
        if not self._pool:
            assert self.root is not None
            people = PennFudanPed(self.root, channels=self.in_channels)
            self._set_class_names(people.segmentation_class_names)
            order = torch.randperm(len(people), generator=torch.Generator().manual_seed(0)).tolist()
            n_test = max(1, round(len(people) * self.test_fraction))
            pool = BoxLabelsAfterBackground(people)
            self._pool = {"test": Subset(pool, order[:n_test]), "train": Subset(pool, order[n_test:])}
        return self._pool[split]
