"""Segmenters for production: preprocessing + network, a class per pixel at the input's size; predict writes
a palette mask and an overlay per image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.serving import draw
from cnnlab.serving.preprocess import Preprocess

OUTPUTS = {
    "classes": "the class index of every pixel (N, H, W) at the input's size, int64",
    "probabilities": "the class probabilities of every pixel (N, num_classes, H, W) at the input's size",
}
#: where predict writes masks and overlays when no --out is given: beside the model
DEFAULT_OUT = "predictions"


class Exported(nn.Module):
    """Preprocessing + network; class scores resized to the input's size, then probabilities and classes."""

    outputs = ("classes", "probabilities")

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.preprocess = Preprocess.from_contract(contract)
        self.net = net

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        height, width = images.shape[-2], images.shape[-1]
        scores = self.net(self.preprocess(images))
        # always resized, also to the same size (an identity): a branch on the size would fix it in the graph
        scores = F.interpolate(scores, size=[height, width], mode="bilinear", align_corners=False)
        return scores.argmax(dim=1), torch.softmax(scores, dim=1)


def wrap(net: nn.Module, contract: dict[str, Any]) -> Exported:
    """The network ready for export."""
    return Exported(net, contract)


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


def records(
    outputs: dict[str, Tensor],
    contract: dict[str, Any],
    sizes: list[tuple[int, int]],
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Per image: its class map (H, W), the share of the pixels of every class present (largest first) and,
    with ``options['probabilities']``, the class probabilities of every pixel."""
    names = list(contract["class_names"])
    found = []
    for n, class_map in enumerate(outputs["classes"]):
        counts = torch.bincount(class_map.flatten(), minlength=len(names))
        total = float(class_map.numel())
        shares = [
            {"class": names[k], "index": k, "share": round(float(counts[k]) / total, 6)}
            for k in torch.argsort(counts, descending=True, stable=True).tolist()
            if counts[k] > 0
        ]
        record: dict[str, Any] = {
            "task": "segmentation",
            "size": list(class_map.shape),
            "shares": shares,
            "classes": class_map.tolist(),
        }
        if options.get("probabilities"):
            record["probabilities"] = torch.round(outputs["probabilities"][n].float(), decimals=6).tolist()
        found.append(record)
    return found


def line(record: dict[str, Any]) -> str:
    """``background 71.2%, cat 20.3%, ...``."""
    return ", ".join(f"{s['class']} {s['share']:.1%}" for s in record["shares"])


def picture(record: dict[str, Any], image: Tensor, alpha: float = 0.5) -> Any:
    """The image tinted with each pixel's class colour."""
    return draw.classes(image, np.asarray(record["classes"]), alpha)


def save(
    record: dict[str, Any], image: Tensor, folder: Path, stem: str, options: dict[str, Any]
) -> list[Path]:
    """``<stem>_mask.png`` (class indices, VOC's palette), ``<stem>_overlay.png`` and, when the record has
    them, ``<stem>_probabilities.npy``."""
    class_map = np.asarray(record["classes"])
    written = [folder / f"{stem}_mask.png", folder / f"{stem}_overlay.png"]
    draw.mask_image(class_map).save(written[0])
    alpha = options.get("alpha")
    written[1].write_bytes(draw.png(picture(record, image, 0.5 if alpha is None else float(alpha))))
    if "probabilities" in record:
        written.append(folder / f"{stem}_probabilities.npy")
        np.save(written[-1], np.asarray(record["probabilities"], dtype=np.float32))
    return written


def footer(records: list[dict[str, Any]], options: dict[str, Any]) -> str | None:
    """Where the masks and overlays went."""
    return f"masks and overlays written to {options['out']}" if records and options.get("out") else None
