"""Checks of segmentation masks that every mask reader shares: at setup for every file of every split (from
``cnnlab.data.scan.scan_masks``, cached beside the data), again as each mask is read.

A mask of the wrong size stops the run before training, naming the file, whichever split holds it; a class
that no training mask holds is named in a warning (the network cannot learn it, and the validation mIoU and
Dice then average over the other classes only: torchmetrics' macro mean leaves out a class with no pixels,
true or predicted).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from cnnlab.data.errors import DatasetFormatError
from cnnlab.data.scan import MaskFacts

log = logging.getLogger(__name__)


def check_size(mask: Path, mask_hw: Sequence[int], image: Path, image_hw: Sequence[int]) -> None:
    """Refuse a mask whose (H, W) is not its image's."""
    if tuple(mask_hw) != tuple(image_hw):
        raise DatasetFormatError(
            f"{mask} is {tuple(mask_hw)} (H, W) but its image {image.name} is {tuple(image_hw)}: a mask must "
            "match its image pixel for pixel; fix or remove the pair"
        )


def check_readable(mask: Path, image: Path, facts: MaskFacts) -> None:
    """Refuse a mask (or image) that cannot be read, or one of the wrong size, as the setup scan found it."""
    if facts.reason:
        raise DatasetFormatError(facts.reason)
    check_size(mask, (facts.height, facts.width), image, (facts.image_height, facts.image_width))


class NamesAbsentClasses:
    """Mixed into a datamodule of masks (before ``ImageDataModule``): its first setup names, in a warning,
    every class that no training mask holds."""

    def setup(self: Any, stage: str | None = None) -> None:
        first = self.test_set is None
        super().setup(stage)  # type: ignore[misc]
        if first:
            warn_absent_classes(self.train_set, self.class_names)


def warn_absent_classes(train: Dataset, class_names: Sequence[str]) -> None:
    """Name, in a warning, every class that no mask of ``train`` holds (read through subsets and wrappers)."""
    held = _mask_classes(train)
    if held is None:  # a dataset of no reader that knows its masks' classes
        return
    present: set[int] = set().union(*held)
    absent = [f"{name!r} ({k})" for k, name in enumerate(class_names) if k not in present]
    if absent:
        log.warning(
            "data: %d of %d classes never occur in the training masks: %s. The network cannot learn %s, and "
            "val/miou and val/dice average over the classes that have pixels (true or predicted) only",
            len(absent),
            len(class_names),
            ", ".join(absent),
            "it" if len(absent) == 1 else "them",
        )


def _mask_classes(dataset: Dataset) -> list[frozenset[int]] | None:
    """The classes each item's mask holds: a reader's ``mask_classes``, through subsets and wrappers."""
    if isinstance(dataset, Subset):
        inner = _mask_classes(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    found = getattr(dataset, "mask_classes", None)
    if found is not None:
        return list(found)
    source = getattr(dataset, "source", None)  # SampleDataset, BoxLabelsAfterBackground
    return _mask_classes(source) if source is not None else None
