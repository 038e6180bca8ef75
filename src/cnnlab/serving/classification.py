"""Classifiers for production: preprocessing, the network, class probabilities and class activation maps.

Where the head is global average pooling then one linear layer (dropout and flatten aside), the export also
returns each class's activation map, ``W_k . features`` at the last feature map's resolution (Zhou et al.,
2016): the logits are those maps' means plus the bias, and Grad-CAM gives the same picture for such a head, so
any format shows where the network looked without a backward pass. Other heads return probabilities alone.

A network that brings its own ``probabilities(output)`` (a capsule network: capsule lengths over their sum)
is exported with those in place of the softmax of its output.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.serving import draw
from cnnlab.serving.preprocess import Preprocess, crop_region

OUTPUTS = {
    "probabilities": "class probabilities (N, num_classes)",
    "cams": "class activation maps (N, num_classes, h, w) on the last feature map, over the crop seen",
}


def cam_layer(net: nn.Module) -> nn.Linear | None:
    """The linear layer of a head made of global average pooling then that layer, else None."""
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Sequential) or not hasattr(net, "forward_features"):
        return None
    layers = [m for m in head if not isinstance(m, (nn.Flatten, nn.Dropout, nn.Identity))]
    if len(layers) != 2 or not isinstance(layers[0], nn.AdaptiveAvgPool2d):
        return None
    pooled_to_one = layers[0].output_size in (1, (1, 1))
    return layers[1] if pooled_to_one and isinstance(layers[1], nn.Linear) else None


class Exported(nn.Module):
    """Preprocessing + network + softmax: class probabilities of float images (N, C, H, W) in [0, 1]."""

    outputs = ("probabilities",)

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.preprocess = Preprocess.from_contract(contract)
        self.net = net

    def forward(self, images: Tensor) -> tuple[Tensor]:
        return (torch.softmax(self.net(self.preprocess(images)), dim=1),)


class ExportedOwnProbabilities(Exported):
    """Preprocessing + network + the network's own ``probabilities`` of its output."""

    def forward(self, images: Tensor) -> tuple[Tensor]:
        return (self.net.probabilities(self.net(self.preprocess(images))),)


class ExportedWithCams(Exported):
    """Probabilities and every class's activation map, for a pooled linear head."""

    outputs = ("probabilities", "cams")

    def __init__(self, net: nn.Module, contract: dict[str, Any], linear: nn.Linear) -> None:
        super().__init__(net, contract)
        self.linear = linear  # the head's own layer, shared: the maps use the trained weights

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.net.forward_features(self.preprocess(images))
        cams = torch.einsum("kc,nchw->nkhw", self.linear.weight, features)
        return torch.softmax(self.net.forward_head(features), dim=1), cams


def wrap(net: nn.Module, contract: dict[str, Any]) -> Exported:
    """The network ready for export, with class activation maps where its head allows them."""
    if hasattr(net, "probabilities"):  # its scores are no softmax of logits, so no maps sum to them either
        return ExportedOwnProbabilities(net, contract)
    linear = cam_layer(net)
    return ExportedWithCams(net, contract, linear) if linear is not None else Exported(net, contract)


# --- records: what a prediction is, in plain values ------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for classifiers."""
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to show per image")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write each image with its class activation map as <out>/<name>.png",
    )


def records(
    outputs: dict[str, Tensor],
    contract: dict[str, Any],
    sizes: list[tuple[int, int]],
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Per image: the top-k classes with their probabilities, and the top class's activation map (where the
    model has them) normalised to [0, 1] with the region of the image it covers."""
    names = list(contract["class_names"])
    k = max(1, int(options.get("top_k") or 5))
    found = []
    for n, probs in enumerate(outputs["probabilities"]):
        values, indices = probs.topk(min(k, probs.numel()))
        top = [
            {"class": names[i], "index": i, "probability": round(float(p), 6)}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        record: dict[str, Any] = {"task": "classification", "top": top}
        if "cams" in outputs:
            best = int(indices[0])
            cam = outputs["cams"][n, best].float().clamp(min=0)
            cam = cam / cam.max() if float(cam.max()) > 0 else cam
            height, width = sizes[n]
            record["cam"] = {
                "class": names[best],
                "values": [[round(v, 4) for v in row] for row in cam.tolist()],
                "region": [round(v, 2) for v in crop_region(height, width, contract)],
            }
        found.append(record)
    return found


def line(record: dict[str, Any]) -> str:
    """``7 0.981, 1 0.011, ...``."""
    return ", ".join(f"{c['class']} {c['probability']:.3f}" for c in record["top"])


def picture(record: dict[str, Any], image: Tensor) -> Any:
    """The image with the top class's activation map laid over the part the network saw."""
    cam = record.get("cam")
    if cam is None:
        return draw.rgb(image)
    return draw.heat(image, cam["values"], cam["region"])


def save(
    record: dict[str, Any], image: Tensor, folder: Path, stem: str, options: dict[str, Any]
) -> list[Path]:
    """``<stem>.png``: the image with its class activation map (or the image alone without one)."""
    path = folder / f"{stem}.png"
    path.write_bytes(draw.png(picture(record, image)))
    return [path]
