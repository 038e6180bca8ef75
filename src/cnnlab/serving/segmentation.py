"""Segmenters for production: preprocessing + network, a class per pixel at the input's size; predict writes
a palette mask and an overlay per image."""

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from cnnlab.data.io import to_unit_range
from cnnlab.serving import classification

OUTPUT = (
    "a class index per pixel (N, H, W) at the input's size; model.probabilities(images) gives the class "
    "probabilities (N, num_classes, H, W)"
)


class Exported(classification.Exported):
    """Preprocessing + network; class scores resized to the input's size, then the likeliest class.

    The classifier's wrapper with another output: the same preprocessing and contract attributes.
    """

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__(net, contract)
        self.serving = __name__

    def forward(self, images: Tensor) -> Tensor:
        """The class index of every pixel (N, H, W), int64, for an image (C, H, W) or a batch (N, C, H, W)."""
        return self.scores(images).argmax(1)

    @torch.jit.export
    def probabilities(self, images: Tensor) -> Tensor:
        """The class probabilities of every pixel (N, num_classes, H, W) at the input's size."""
        return torch.softmax(self.scores(images), dim=1)

    def scores(self, images: Tensor) -> Tensor:
        """The network's class scores (N, num_classes, H, W), bilinearly resized to the input's size."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        height, width = images.shape[-2], images.shape[-1]
        scores = self.net(self.preprocess(images))
        if scores.shape[-2] != height or scores.shape[-1] != width:
            scores = F.interpolate(scores, size=[height, width], mode="bilinear", align_corners=False)
        return scores


def palette() -> np.ndarray:
    """Pascal VOC's colour of each class index 0..255 (0 black, 255 cream) as (256, 3) uint8."""
    index = np.arange(256)
    colours = np.zeros((256, 3), dtype=np.uint8)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colours[:, channel] |= (((index >> channel) & 1) << shift).astype(np.uint8)
        index = index >> 3
    return colours


def overlay(image: Tensor, classes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image (C, H, W) as RGB (H, W, 3) uint8, tinted with each pixel's class colour except class 0's."""
    rgb = (to_unit_range(image).clamp(0, 1) * 255).round().to(torch.uint8)
    rgb = rgb.expand(3, -1, -1) if rgb.shape[0] == 1 else rgb
    pixels = rgb.permute(1, 2, 0).numpy().astype(np.float32)
    tinted = classes != 0
    pixels[tinted] = (1 - alpha) * pixels[tinted] + alpha * palette()[classes[tinted]]
    return pixels.round().astype(np.uint8)


def mask_image(classes: np.ndarray) -> Image.Image:
    """A class map (H, W) as a palette PNG image: indices stored, VOC colours shown."""
    image = Image.fromarray(classes.astype(np.uint8))
    image.putpalette(palette().flatten().tolist())
    return image


def pixel_shares(classes: np.ndarray, names: list[str]) -> list[tuple[str, float]]:
    """(class name, share of the pixels) of every class present, the largest first."""
    counts = np.bincount(classes.ravel(), minlength=len(names))
    present = [(names[k], counts[k] / classes.size) for k in np.flatnonzero(counts)]
    return sorted(present, key=lambda pair: -pair[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for segmenters."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for masks and overlays (default: predictions/ beside the model)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="opacity of the class colours in the overlays"
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write each image's class probabilities (num_classes, H, W) as <name>_probabilities.npy",
    )


@torch.inference_mode()
def show(
    model: torch.jit.ScriptModule, images: Iterable[tuple[Path, Tensor]], args: argparse.Namespace
) -> None:
    """Write ``<name>_mask.png`` and ``<name>_overlay.png`` per image; print its classes with pixel shares."""
    out = args.out if args.out is not None else Path(args.model).parent / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    names = list(model.class_names)
    written: set[str] = set()
    for path, image in images:
        if args.probabilities:
            probs = model.probabilities(image)[0]
            classes = probs.argmax(0).numpy()
        else:
            classes = model(image)[0].numpy()
        stem = _free_name(path.stem, written)
        mask_image(classes).save(out / f"{stem}_mask.png")
        Image.fromarray(overlay(image, classes, args.alpha)).save(out / f"{stem}_overlay.png")
        if args.probabilities:
            np.save(out / f"{stem}_probabilities.npy", probs.numpy())
        shares = pixel_shares(classes, names)
        print(f"{path}: " + ", ".join(f"{name} {share:.1%}" for name, share in shares))
    print(f"masks and overlays written to {out}")


def _free_name(stem: str, taken: set[str]) -> str:
    # images of one name from different folders must not overwrite each other's outputs
    name, number = stem, 1
    while name in taken:
        number += 1
        name = f"{stem}_{number}"
    taken.add(name)
    return name
