"""Detection augmentation presets: joint steps on an image and its boxes, after torchvision's references.

Each preset (the ``augmentation`` config group's ``det_*`` options) returns ``torchvision.transforms.v2``
steps that move the boxes with the pixels, and ends by clipping the boxes to the image and dropping those a
crop made smaller than ``min_box_size`` pixels, with their labels and flags. The detector resizes its input
by itself (to ``image_size``), so a preset changes an object's scale relative to the picture around it
(crop, zoom out, jitter inside a fixed canvas), never the picture's size alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.transforms import v2

from cnnlab.data.transforms import FILL

#: the target keys that hold one value per box: a dropped box takes its entries with it
PER_BOX_KEYS = ("labels", "difficult", "iscrowd")


def per_box_fields(sample: Any) -> tuple[Tensor, ...]:
    """The per-box tensors of an ``(image, target)`` sample: labels, and difficult or crowd flags."""
    target = sample[1]
    return tuple(target[key] for key in PER_BOX_KEYS if key in target)


def finish(min_box_size: float = 1.0) -> list[nn.Module]:
    """Clip boxes to the image, then drop those narrower or lower than ``min_box_size`` pixels."""
    return [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=min_box_size, labels_getter=per_box_fields),
    ]


def _photometric(p: float) -> list[nn.Module]:
    # brightness, contrast, saturation and hue jitter and a channel shuffle, each with probability p (SSD's)
    return [v2.RandomPhotometricDistort(p=p)] if p > 0 else []


def _flip(p: float) -> list[nn.Module]:
    return [v2.RandomHorizontalFlip(p)] if p > 0 else []


def flip(
    image_size: int, resize_size: int, hflip: float = 0.5, photometric: float = 0.0, min_box_size: float = 1.0
) -> list[nn.Module]:
    """Horizontal flip (and photometric jitter when ``photometric`` > 0): objects keep their size."""
    return [*_photometric(photometric), *_flip(hflip), *finish(min_box_size)]


def ssd(
    image_size: int,
    resize_size: int,
    hflip: float = 0.5,
    photometric: float = 0.5,
    zoom_out: float = 0.5,
    max_zoom_out: float = 2.0,
    iou_crop: bool = True,
    min_crop_scale: float = 0.3,
    min_box_size: float = 1.0,
) -> list[nn.Module]:
    """SSD's recipe (Liu et al., 2016): photometric jitter, zoom out, a crop that keeps objects, flip.

    Zoom out (with probability ``zoom_out``) places the picture on a canvas up to ``max_zoom_out`` times its
    size, so objects shrink; the IoU crop keeps a region of at least ``min_crop_scale`` of each side that
    overlaps some object by a randomly drawn IoU (or, one time in seven, the whole picture), so objects grow.
    Boxes whose centre falls outside the crop are dropped.
    """
    if max_zoom_out < 1:
        raise ValueError(f"augmentation.max_zoom_out={max_zoom_out}: give a canvas size of at least 1")
    steps = _photometric(photometric)
    if zoom_out > 0 and max_zoom_out > 1:
        steps.append(v2.RandomZoomOut(fill=FILL, side_range=(1.0, float(max_zoom_out)), p=zoom_out))
    if iou_crop:
        steps.append(v2.RandomIoUCrop(min_scale=min_crop_scale))
    return [*steps, *_flip(hflip), *finish(min_box_size)]


def scale_jitter(
    image_size: int,
    resize_size: int,
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    photometric: float = 0.0,
    min_box_size: float = 1.0,
) -> list[nn.Module]:
    """Large-scale jitter (Ghiasi et al., 2021): rescale by ``scale_range``, then crop or pad to a square.

    At scale 1 the picture's longer side fits ``image_size``; the square canvas of ``image_size`` pixels then
    cuts off part of a larger picture or pads a smaller one, so objects change size relative to the canvas.
    """
    low, high = (float(v) for v in scale_range)
    if not 0 < low <= high:
        raise ValueError(
            f"augmentation.scale_range={list(scale_range)}: give (smallest, largest), 0 < smallest"
        )
    return [
        *_photometric(photometric),
        v2.ScaleJitter(target_size=(image_size, image_size), scale_range=(low, high), antialias=True),
        v2.RandomCrop(image_size, pad_if_needed=True, fill=FILL),
        *_flip(hflip),
        *finish(min_box_size),
    ]
