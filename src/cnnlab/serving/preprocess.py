"""The evaluation preprocessing inside exported models: geometry and normalisation, at any input size.

``Preprocess`` computes what ``cnnlab.data.transforms.Evaluate`` does with torchvision's kernels (resize the
shorter side with antialiasing, centre-crop, normalise), but without branching on the input's shape:
torch.export and the ONNX exporter then keep batch, height and width dynamic, and TorchScript compiles the
same code. The sizes follow torchvision's rules exactly (the long side floored, the crop's corner rounded
half to even), so the export sees the pixels evaluation saw (tested against ``Evaluate``).

Exported graphs take float images in [0, 1]; ``to_unit_range`` (``cnnlab.data.io``) scales files of any bit
depth before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GEOMETRIES = ("crop", "resize", "none")


def shorter_side_to(images: Tensor, size: int) -> Tensor:
    """Resize (N, C, H, W) so that the shorter side is ``size`` px, the longer one floored as torchvision."""
    height, width = images.shape[-2], images.shape[-1]
    # min() on an exported graph's symbolic sizes would fix which side is shorter; sym_min keeps both open
    shorter = min(height, width) if torch.jit.is_scripting() else torch.sym_min(height, width)
    new_height, new_width = (size * height) // shorter, (size * width) // shorter
    return F.interpolate(
        images, size=[new_height, new_width], mode="bilinear", align_corners=False, antialias=True
    )


def centre_crop(images: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` square of images at least that large, placed as torchvision does."""
    extra_h, extra_w = images.shape[-2] - size, images.shape[-1] - size
    # torchvision rounds the corner half to even: round(d / 2) is d // 2, plus one when d % 4 == 3
    top = extra_h // 2 + (extra_h % 4) // 3
    left = extra_w // 2 + (extra_w % 4) // 3
    # picked rows and columns, not a slice or narrow: the length is ``size`` whatever the input's size, where
    # a slice's end could lie past the edge and narrow would compare its length with the side's
    rows = torch.arange(size, device=images.device) + top
    columns = torch.arange(size, device=images.device) + left
    return images.index_select(-2, rows).index_select(-1, columns)


class Preprocess(nn.Module):
    """The evaluation geometry and normalisation of float images (N, C, H, W) in [0, 1]."""

    def __init__(
        self,
        geometry: str,
        image_size: int,
        resize_size: int,
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry={geometry!r}: choose one of {', '.join(GEOMETRIES)}")
        if geometry == "crop" and resize_size < image_size:
            raise ValueError(f"resize_size={resize_size} is smaller than the crop, image_size={image_size}")
        self.geometry, self.image_size, self.resize_size = geometry, int(image_size), int(resize_size)
        self.normalize = len(mean) > 0
        # buffers: the statistics travel inside every exported format and follow the module's device
        self.register_buffer("mean", torch.tensor([float(v) for v in mean] or [0.0]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std] or [1.0]).view(1, -1, 1, 1))

    @classmethod
    def from_contract(cls, contract: dict[str, Any]) -> Preprocess:
        """The preprocessing an exported model's contract describes."""
        return cls(
            contract.get("geometry", "crop"),
            contract["image_size"],
            contract["resize_size"],
            contract.get("mean", []),
            contract.get("std", []),
        )

    def forward(self, images: Tensor) -> Tensor:
        x = images
        if self.geometry == "crop":
            x = centre_crop(shorter_side_to(x, self.resize_size), self.image_size)
        elif self.geometry == "resize":
            x = shorter_side_to(x, self.image_size)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x


def crop_region(height: int, width: int, contract: dict[str, Any]) -> list[float]:
    """The part of an (H, W) image the network sees, as x1, y1, x2, y2 in its pixels (all of it unless
    the geometry crops): where maps at the network's resolution belong on the original image."""
    if contract.get("geometry", "crop") != "crop":
        return [0.0, 0.0, float(width), float(height)]
    resize, size = int(contract["resize_size"]), int(contract["image_size"])
    shorter = min(height, width)
    new_h, new_w = resize * height // shorter, resize * width // shorter
    extra_h, extra_w = new_h - size, new_w - size
    top, left = extra_h // 2 + (extra_h % 4) // 3, extra_w // 2 + (extra_w % 4) // 3
    scale_y, scale_x = height / new_h, width / new_w
    return [left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y]
