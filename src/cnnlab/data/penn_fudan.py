"""The Penn-Fudan pedestrian database as distributed: ``PennFudanPed/PNGImages/<name>.png`` and
``PennFudanPed/PedMasks/<name>_mask.png``.

A mask holds one id per pedestrian (0 is the background, 1..N the people), from which each person's binary
mask and tight box follow; ``Annotation/*.txt`` repeats those boxes and is not read. Every mask is decoded
once when the folder is opened (cached beside it), so a bad one stops a run before training.
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
from cnnlab.data.masks import NamesAbsentClasses, check_readable, check_size
from cnnlab.data.scan import scan_masks
from cnnlab.samples import BoxLabelsAfterBackground

log = logging.getLogger(__name__)

URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
FOLDER = "PennFudanPed"
LAYOUT = ("PNGImages", "PedMasks")


class PennFudanPed(Dataset):
    """170 street photos with a box, a mask and the label ``person`` (0) for each pedestrian."""

    def __init__(self, root: str | os.PathLike, channels: int = 3, workers: int = 0) -> None:
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
        expected = {mask.name for _, mask in self.samples}
        masks = sorted(p for p in (self.folder / "PedMasks").glob("*.png") if not p.name.startswith("."))
        alone = [mask.name for mask in masks if mask.name not in expected]
        if alone:
            listed = ", ".join(alone[:5]) + (" ..." if len(alone) > 5 else "")
            raise DatasetNotFoundError(
                f"{len(alone)} masks in {self.folder / 'PedMasks'} have no photo in "
                f"{self.folder / 'PNGImages'}: {listed}. PedMasks/<name>_mask.png is the mask of "
                "PNGImages/<name>.png: add the photo, or remove the mask"
            )
        facts = scan_masks(self.samples, self.folder, workers)
        for image, mask in self.samples:
            check_readable(mask, image, facts[mask])
        #: the classes each semantic mask holds: 0 where there is background, 1 where there are people
        self.mask_classes = [frozenset(int(v > 0) for v in facts[mask].values) for _, mask in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.channels)
        ids = read_mask(mask_path)
        check_size(mask_path, ids.shape, image_path, image.shape[1:])  # again: a file replaced during the run
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


class PennFudanDataModule(NamesAbsentClasses, ImageDataModule):
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
            people = PennFudanPed(self.root, channels=self.in_channels, workers=self.num_workers)
            self._set_class_names(people.segmentation_class_names)
            order = torch.randperm(len(people), generator=torch.Generator().manual_seed(0)).tolist()
            n_test = max(1, round(len(people) * self.test_fraction))
            if len(people) - n_test < 2:
                raise DatasetFormatError(
                    f"{people.folder / 'PNGImages'} holds {len(people)} photo{'s' if len(people) > 1 else ''}"
                    f": too few to hold out data.test_fraction={self.test_fraction} ({n_test}) for testing "
                    "and still train and validate on the rest (at least one photo each). Add photos (with "
                    "their PedMasks/<name>_mask.png)"
                )
            pool = BoxLabelsAfterBackground(people)
            self._pool = {"test": Subset(pool, order[:n_test]), "train": Subset(pool, order[n_test:])}
        return self._pool[split]
