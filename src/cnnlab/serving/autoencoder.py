"""Autoencoders for production: preprocessing + network, returning the reconstruction; predict prints the
error of each image and writes its reconstruction as a PNG."""

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from cnnlab.serving import classification

OUTPUT = "the reconstruction in [0, 1] of each preprocessed image (N, C, image_size, image_size)"


class Exported(classification.Exported):
    """Scale to [0, 1] and shape as in evaluation, then the autoencoder: its reconstruction of each image.

    The classifier's wrapper with another output: the same preprocessing (the contract has no mean and std:
    the network reconstructs images in [0, 1]) and contract attributes, and the mode.
    """

    # class-level annotations (real types, not postponed strings): TorchScript types the attributes from them
    mode: str

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__(net, contract)
        self.serving = __name__
        self.mode = str(contract.get("mode", "reconstruct"))

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return self.net(self.preprocess(images))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for autoencoders."""
    parser.add_argument(
        "--out", type=Path, default=None, help="write each reconstruction as <out>/<image name>.png"
    )


def save_png(image: Tensor, path: Path) -> None:
    """Write an image (C, H, W) or (H, W) in [0, 1] as an 8-bit PNG (grey for one channel)."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if pixels.dim() == 3:
        pixels = pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels.numpy())).save(path)


def output_path(folder: Path, image: Path, used: set[Path]) -> Path:
    """Where the picture made from ``image`` goes: ``folder/<stem>.png``, led by the image's folder name
    (``crack_000.png``) or numbered when an earlier image of the call took that name."""
    path = folder / f"{image.stem}.png"
    if path in used:
        path = folder / f"{image.parent.name}_{image.stem}.png"
    number = 1
    while path in used:
        path, number = folder / f"{image.parent.name}_{image.stem}_{number}.png", number + 1
    used.add(path)
    return path


@torch.inference_mode()
def show(
    model: torch.jit.ScriptModule, images: Iterable[tuple[Path, Tensor]], args: argparse.Namespace
) -> None:
    """Print one line per image: the mean squared error of its reconstruction and its PSNR."""
    used: set[Path] = set()
    for path, image in images:
        reconstruction = model(image)[0]
        error = float((reconstruction - model.preprocess(image)).pow(2).mean())
        psnr = 10 * np.log10(1.0 / max(error, 1e-12))
        line = f"{path}: error {error:.5f} (PSNR {psnr:.1f} dB)"
        if args.out is not None:
            written = output_path(args.out, path, used)
            save_png(reconstruction, written)
            line += f" -> {written}"
        print(line)
