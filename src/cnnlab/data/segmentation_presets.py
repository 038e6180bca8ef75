"""Augmentation presets for segmentation: flips, scale jitter, padded random crops and colour jitter.

Every step is a ``torchvision.transforms.v2`` transform applied to the image and its mask together: masks are
resized with nearest neighbour (v2 does so for ``tv_tensors.Mask``), and a crop reaching past the border pads
the image with black and the mask with ``IGNORE_INDEX``, so the loss skips pixels that were never there.
Training crops have one size (``crop_size``, by default ``image_size``), so training batches stack.
Evaluation crops nothing: it resizes the shorter side to ``image_size`` (the segmentation task's
``eval_geometry="resize"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.transforms import v2

from cnnlab.data.transforms import FILL
from cnnlab.errors import ConfigError


def basic(
    image_size: int,
    resize_size: int,
    crop_size: int | None = None,
    padding: int = 0,
    hflip: float = 0.5,
    vflip: float = 0.0,
) -> list[nn.Module]:
    """The shorter side at ``image_size``, a random ``crop_size`` square (``padding`` first) and flips."""
    steps: list[nn.Module] = [v2.Resize(image_size, antialias=True)]
    return steps + _crop_and_flips(crop_size or image_size, padding, hflip, vflip)


def standard(
    image_size: int,
    resize_size: int,
    crop_size: int | None = None,
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    vflip: float = 0.0,
    jitter: float = 0.2,
) -> list[nn.Module]:
    """Scale jitter (``scale`` times ``image_size``), a random square crop, flips and colour jitter."""
    low, high = (float(v) for v in scale)
    if not 0 < low <= high:
        raise ConfigError(
            f"augmentation.scale={list(scale)}: give [smallest, largest] factors of the shorter side, "
            "0 < smallest <= largest (e.g. [0.5, 2.0])"
        )
    smallest = max(1, round(low * image_size))
    # RandomResize draws sizes from [min_size, max_size): one more, so that `largest` can be drawn
    steps: list[nn.Module] = [v2.RandomResize(smallest, max(smallest, round(high * image_size)) + 1)]
    steps += _crop_and_flips(crop_size or image_size, 0, hflip, vflip)
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return steps


def _crop_and_flips(crop_size: int, padding: int, hflip: float, vflip: float) -> list[nn.Module]:
    if crop_size < 1 or padding < 0:
        raise ConfigError(
            f"augmentation.crop_size={crop_size}, augmentation.padding={padding}: the crop needs at least "
            "one pixel and the padding cannot be negative"
        )
    steps: list[nn.Module] = [
        v2.RandomCrop(crop_size, padding=padding or None, pad_if_needed=True, fill=FILL)
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if vflip > 0:
        steps.append(v2.RandomVerticalFlip(vflip))
    return steps
