"""Image transforms: the deterministic preprocessing shared with exported models, and augmentation presets.

Every step is a ``torchvision.transforms.v2`` transform applied to a sample's image and target together (see
``cnnlab.samples``): masks follow the image with nearest-neighbour resizing, boxes are moved and clipped.
Evaluation converts to float in [0, 1] (by the image's bit depth), applies the task's geometry (``crop``:
resize the shorter side and centre-crop; ``resize``: the shorter side only; ``none``) and normalises.
``cnnlab.serving.preprocess.Preprocess`` computes the same inside exported models (tested equal), so a
checkpoint and its export see identical inputs.
Augmentation presets (the ``augmentation`` config group) are functions that return training steps; geometric
presets end at ``image_size`` pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cnnlab.data.io import to_unit_range
from cnnlab.samples import IGNORE_INDEX
from cnnlab.serving.preprocess import GEOMETRIES

AugmentationFactory = Callable[..., list[nn.Module]]

#: what geometric steps pad with: black pixels, and the ignored class in masks
FILL = {tv_tensors.Mask: IGNORE_INDEX, "others": 0}


class WideToFloat(v2.Transform):
    """16-bit images to float in [0, 1]; uint8 images pass (augmentation works on uint8 or float images)."""

    _transformed_types = (tv_tensors.Image,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.dtype == torch.uint8 or inpt.is_floating_point():
            return inpt
        return tv_tensors.wrap(to_unit_range(inpt.as_subclass(Tensor)), like=inpt)


class Evaluate(v2.Transform):
    """Scale to [0, 1], the evaluation geometry and normalisation, on a sample's image and target together.

    One step rather than four v2 transforms: each v2 step takes the sample apart and puts it together again,
    which costs more than the arithmetic on small images.
    """

    def __init__(
        self,
        geometry: str,
        image_size: int,
        resize_size: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry={geometry!r}: choose one of {', '.join(GEOMETRIES)}")
        self.geometry, self.image_size, self.resize_size = geometry, int(image_size), int(resize_size)
        self.mean, self.std = (list(mean), list(std)) if mean and std else (None, None)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # v2 hands over a plain tensor only when it stands for the image (no tv_tensors.Image in the sample)
        is_image = isinstance(inpt, tv_tensors.Image) or type(inpt) is torch.Tensor
        if is_image:
            inpt = F.to_dtype(inpt, torch.float32, scale=True)
        if self.geometry == "crop":
            inpt = F.resize(inpt, [self.resize_size], antialias=True)
            inpt = F.center_crop(inpt, [self.image_size, self.image_size])
        elif self.geometry == "resize":
            inpt = F.resize(inpt, [self.image_size], antialias=True)
        if is_image and self.mean is not None:
            inpt = F.normalize(inpt, self.mean, self.std)
        return inpt


def geometry_steps(geometry: str, image_size: int, resize_size: int) -> list[nn.Module]:
    """The evaluation geometry as v2 steps."""
    if geometry == "crop":
        return [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
    if geometry == "resize":
        return [v2.Resize(image_size, antialias=True)]
    if geometry == "none":
        return []
    raise ValueError(f"geometry={geometry!r}: choose one of {', '.join(GEOMETRIES)}")


def _finish(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[nn.Module]:
    return [v2.Normalize(list(mean), list(std))] if mean and std else []


# --- augmentation presets: the `augmentation` config group points its `_target_` at one of these ---------


def none(image_size: int, resize_size: int) -> list[nn.Module]:
    """No augmentation: training images are preprocessed exactly like evaluation images."""
    return []


def basic(image_size: int, resize_size: int, hflip: float = 0.5, padding: int = 4) -> list[nn.Module]:
    """Random crop (with zero padding) and horizontal flip: the classic CIFAR recipe."""
    steps: list[nn.Module] = [v2.Resize(resize_size, antialias=True)]
    steps.append(v2.RandomCrop(image_size, padding=padding if resize_size == image_size else None, fill=FILL))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    return steps


def standard(
    image_size: int,
    resize_size: int,
    scale: Sequence[float] = (0.35, 1.0),
    hflip: float = 0.5,
    jitter: float = 0.2,
) -> list[nn.Module]:
    """RandomResizedCrop, horizontal flip and colour jitter: the ImageNet training recipe."""
    steps: list[nn.Module] = [v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return steps


def randaugment(
    image_size: int, resize_size: int, num_ops: int = 2, magnitude: int = 9, hflip: float = 0.5
) -> list[nn.Module]:
    """`basic` followed by RandAugment (Cubuk et al., 2020)."""
    return basic(image_size, resize_size, hflip) + [v2.RandAugment(num_ops=num_ops, magnitude=magnitude)]


def trivialaugment(image_size: int, resize_size: int, hflip: float = 0.5) -> list[nn.Module]:
    """`basic` followed by TrivialAugmentWide (Müller and Hutter, 2021)."""
    return basic(image_size, resize_size, hflip) + [v2.TrivialAugmentWide()]


def autoaugment(
    image_size: int, resize_size: int, policy: str = "cifar10", hflip: float = 0.5
) -> list[nn.Module]:
    """`basic` followed by AutoAugment with a learned policy: imagenet, cifar10 or svhn."""
    policies = {p.value: p for p in v2.AutoAugmentPolicy}
    if policy not in policies:
        raise ValueError(
            f"augmentation.policy={policy!r} is not an AutoAugment policy; choose one of {sorted(policies)}"
        )
    return basic(image_size, resize_size, hflip) + [v2.AutoAugment(policies[policy])]


def train_transform(
    augmentation: AugmentationFactory,
    image_size: int,
    resize_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    geometry: str = "crop",
) -> v2.Compose:
    """The training pipeline: the augmentation preset's steps, then scale to [0, 1] and normalise.

    A preset with no steps of its own leaves the geometry to the evaluation's, so it trains on what it tests.
    """
    steps = augmentation(image_size=image_size, resize_size=resize_size)
    if not steps:
        return eval_transform(image_size, resize_size, mean, std, geometry)
    return v2.Compose([WideToFloat(), *steps, v2.ToDtype(torch.float32, scale=True), *_finish(mean, std)])


def eval_transform(
    image_size: int,
    resize_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    geometry: str = "crop",
) -> v2.Transform:
    """The evaluation pipeline, the same computation as exported models' ``Preprocess``."""
    return Evaluate(geometry, image_size, resize_size, mean, std)
