"""Autoencoders for production: preprocessing + network, returning each image's reconstruction (in denoise
mode: the denoised image) and its reconstruction error."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.serving import draw
from cnnlab.serving.preprocess import Preprocess

OUTPUTS = {
    "reconstructions": "each preprocessed image's reconstruction in [0, 1] (N, C, image_size, image_size)",
    "errors": "each image's mean squared reconstruction error (N,)",
}


class Exported(nn.Module):
    """Scale and shape as in evaluation (no normalisation: the network reconstructs images in [0, 1]), then
    the autoencoder."""

    outputs = ("reconstructions", "errors")

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.preprocess = Preprocess.from_contract(contract)
        self.net = net

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.preprocess(images)
        reconstructions = self.net(x)
        return reconstructions, (reconstructions - x).pow(2).flatten(1).mean(dim=1)


def wrap(net: nn.Module, contract: dict[str, Any]) -> Exported:
    """The network ready for export."""
    return Exported(net, contract)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for autoencoders."""
    parser.add_argument(
        "--out", type=Path, default=None, help="write each reconstruction as <out>/<image name>.png"
    )


def records(
    outputs: dict[str, Tensor],
    contract: dict[str, Any],
    sizes: list[tuple[int, int]],
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Per image: its reconstruction error, the PSNR that error means, and the reconstruction (C, S, S)."""
    found = []
    for reconstruction, error in zip(outputs["reconstructions"], outputs["errors"].tolist(), strict=True):
        found.append(
            {
                "task": "autoencoder",
                "mode": contract.get("mode", "reconstruct"),
                "error": round(error, 8),
                "psnr": round(10 * math.log10(1.0 / max(error, 1e-12)), 3),
                "reconstruction": torch.round(reconstruction.float().clamp(0, 1), decimals=4).tolist(),
            }
        )
    return found


def line(record: dict[str, Any]) -> str:
    """``error 0.00123 (PSNR 29.1 dB)``."""
    return f"error {record['error']:.5f} (PSNR {record['psnr']:.1f} dB)"


def picture(record: dict[str, Any], image: Tensor) -> Any:
    """The reconstruction, at the network's size."""
    return draw.rgb(draw.grey(record["reconstruction"]))


def save(
    record: dict[str, Any], image: Tensor, folder: Path, stem: str, options: dict[str, Any]
) -> list[Path]:
    """``<stem>.png``: the reconstruction (grey for one channel)."""
    path = folder / f"{stem}.png"
    path.write_bytes(draw.png(draw.grey(record["reconstruction"])))
    return [path]
