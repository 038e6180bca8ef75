"""Samples and batches: what a dataset yields, what a task asks of it, and how samples become a batch.

A sample is ``(image, target)``: a ``tv_tensors.Image`` (uint8, or uint16 for 16-bit files) and a dict whose
keys say what the sample knows: ``label`` (the image's class), ``anomaly`` (0 normal, 1 anomalous), ``mask``
(``tv_tensors.Mask``, a class per pixel, ``IGNORE_INDEX`` where unknown), ``boxes`` (``BoundingBoxes``, XYXY
pixels) with ``labels``, ``instance_masks``, ``difficult``, ``iscrowd``. Transforms are
``torchvision.transforms.v2`` steps applied to image and target together, so a flip moves the boxes and a
resize keeps the mask aligned.

A task says which keys it needs (and which it uses when present), how evaluation images are shaped and how
samples are collated: its ``SampleSpec``. A datamodule says which keys its samples carry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

#: the class index of pixels whose class is unknown (VOC's object borders, padding): losses skip them
IGNORE_INDEX = 255

#: what each target key holds, for messages that say what a dataset lacks
TARGET_KEYS = {
    "label": "a class label per image",
    "anomaly": "normal/anomalous flags (labelled data with data.normal_classes, or an anomaly dataset)",
    "mask": "a class per pixel (segmentation masks)",
    "boxes": "object boxes with their labels",
}


@dataclass(frozen=True)
class SampleSpec:
    """What a task asks of the data."""

    #: target keys the task cannot train without
    needs: tuple[str, ...]
    #: target keys it uses when the data has them (a colour per class, pixel-level anomaly truth)
    wants: tuple[str, ...] = ()
    #: evaluation geometry: "crop" (resize the shorter side, centre-crop a square), "resize" (the shorter
    #: side only; aspect kept, nothing cut off) or "none" (the network resizes by itself)
    eval_geometry: str = "crop"
    #: normalise with the data's mean and std (False: images in [0, 1], for networks that need them so)
    normalize: bool = True
    #: turns a list of samples into a batch
    collate: Callable[[list[Any]], Any] = field(default=default_collate)

    def keys(self) -> tuple[str, ...]:
        """Every target key the task reads."""
        return self.needs + self.wants


def as_image(image: Any) -> tv_tensors.Image:
    """A dataset's image (PIL, tensor or tv_tensor) as a ``tv_tensors.Image`` of its own dtype."""
    if isinstance(image, tv_tensors.Image):
        return image
    if isinstance(image, Image.Image):
        return tv_tensors.Image(F.pil_to_tensor(image))
    if isinstance(image, Tensor):
        return tv_tensors.Image(image if image.dim() == 3 else image.unsqueeze(0))
    raise TypeError(
        f"a dataset yielded an image of type {type(image).__name__}; expected a tensor or PIL image"
    )


def as_target(target: Any) -> dict[str, Any]:
    """A dataset's target as a dict: a bare class index becomes ``{"label": index}``."""
    if isinstance(target, dict):
        return target
    return {"label": int(target)}


class SampleDataset(Dataset):
    """The samples of ``source`` with the target keys ``keys`` kept, through a joint ``transform``.

    ``normal_classes`` (labelled data used for anomaly detection) adds ``anomaly``: 0 for an image of one of
    those classes, 1 for any other.
    """

    def __init__(
        self,
        source: Dataset,
        transform: Callable[..., Any],
        keys: Sequence[str],
        normal_classes: Sequence[int] | None = None,
    ) -> None:
        # boxes come with their labels: one target, two keys
        keys = tuple(keys) + (("labels",) if "boxes" in keys and "labels" not in keys else ())
        self.source, self.transform, self.keys = source, transform, keys
        self.normal = set(normal_classes) if normal_classes is not None else None

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image, target = self.source[index]
        target = as_target(target)
        if self.normal is not None:
            target = {**target, "anomaly": int(target["label"] not in self.normal)}
        kept = {key: target[key] for key in self.keys if key in target}
        return self.transform(as_image(image), kept)


class BoxLabelsAfterBackground(Dataset):
    """The items of ``source`` with box labels moved up by one, past the background class of its masks.

    A dataset with both masks and boxes then has one class index for both: ``class_names[0]`` is the
    background (never a box label), ``class_names[k]`` the class of mask value k and of box label k.
    """

    def __init__(self, source: Dataset) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.source[index]
        return image, {**target, "labels": target["labels"] + 1}


# --- collate functions: a task's SampleSpec names one ----------------------------------------------------


def stack_collate(samples: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, dict[str, Tensor]]:
    """Images of one size stacked (N, C, H, W); every target key stacked the same way."""
    return default_collate(samples)


def label_collate(samples: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, Tensor]:
    """Images stacked, and their class labels as one int64 tensor."""
    images = torch.stack([image for image, _ in samples])
    return images.as_subclass(Tensor), torch.tensor([t["label"] for _, t in samples], dtype=torch.long)


def pad_collate(samples: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, dict[str, Tensor]]:
    """Images of different sizes padded (bottom, right) to the largest: zeros; masks with ``IGNORE_INDEX``."""
    height = max(image.shape[-2] for image, _ in samples)
    width = max(image.shape[-1] for image, _ in samples)
    images, targets = [], []
    for image, target in samples:
        pad = [0, width - image.shape[-1], 0, height - image.shape[-2]]
        images.append(torch.nn.functional.pad(image.as_subclass(Tensor), pad, value=0.0))
        padded = dict(target)
        if "mask" in padded:
            padded["mask"] = torch.nn.functional.pad(
                padded["mask"].as_subclass(Tensor), pad, value=IGNORE_INDEX
            )
        targets.append(padded)
    return torch.stack(images), default_collate(targets)


def list_collate(samples: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Lists of images and target dicts, as torchvision's detectors take them."""
    images = [image.as_subclass(Tensor) for image, _ in samples]
    targets = [
        {k: (v.as_subclass(Tensor) if isinstance(v, Tensor) else v) for k, v in target.items()}
        for _, target in samples
    ]
    return images, targets
