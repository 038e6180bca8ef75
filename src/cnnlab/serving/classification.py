"""Classifiers for production: preprocessing + network + softmax; predict prints the top-k classes."""

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.data.transforms import Preprocess

OUTPUT = "class probabilities (N, num_classes)"


class Exported(nn.Module):
    """Preprocessing + network + softmax, with the class names and input contract as attributes."""

    # class-level annotations (real types, not postponed strings): TorchScript types the attributes from them
    serving: str
    class_names: list[str]
    in_channels: int
    image_size: int

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.preprocess = Preprocess.from_contract(contract, "crop")
        self.net = net
        self.serving = __name__
        self.class_names = list(contract["class_names"])
        self.in_channels = int(contract["in_channels"])
        self.image_size = int(contract["image_size"])

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return torch.softmax(self.net(self.preprocess(images)), dim=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for classifiers."""
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to print per image")


@torch.inference_mode()
def top_k(model: torch.jit.ScriptModule, image: Tensor, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` (class name, probability) pairs for one image, most likely first."""
    probs = model(image)[0]
    values, indices = probs.topk(min(k, probs.numel()))
    return [(model.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def show(
    model: torch.jit.ScriptModule, images: Iterable[tuple[Path, Tensor]], args: argparse.Namespace
) -> None:
    """Print one line per image: ``path: class p, class p, ...``."""
    for path, image in images:
        ranked = top_k(model, image, args.top_k)
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
