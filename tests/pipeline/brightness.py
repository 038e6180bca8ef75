"""A second task built from new files alone: predict an image's mean brightness, lower error is better.

It lives in the test suite to prove that a task is a module plus a config: nothing of cnnlab's generic code
names it, yet checkpointing, testing, the sweep report and export all follow its metric direction. The
module is its own serving module too (``wrap``, ``OUTPUTS``, ``records``, ``line``, ...), as the modules of
``cnnlab.serving`` are.
"""

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from cnnlab.samples import SampleSpec
from cnnlab.serving import draw
from cnnlab.serving.preprocess import Preprocess
from cnnlab.tasks.base import BaseTask

OUTPUTS = {"brightness": "the predicted mean brightness (N,)"}


class BrightnessTask(BaseTask):
    """Regress the mean pixel value of the (unnormalised) image with a one-output network."""

    name = "brightness"
    samples = SampleSpec(needs=(), normalize=False, collate=default_collate)
    network_output = "scores"
    metrics = {"loss": "min", "mae": "min"}
    serving = __name__

    def __init__(self, net: nn.Module, optimizer: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(net, optimizer, **kwargs)

    def _step(self, batch: Any, split: str) -> Tensor:
        images = batch[0]
        target = images.mean(dim=(1, 2, 3))
        predicted = self(images).squeeze(1)
        loss = nn.functional.mse_loss(predicted, target)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=len(images))
        self.log(f"{split}/mae", (predicted - target).abs().mean(), batch_size=len(images))
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")


class Exported(nn.Module):
    """Evaluation's geometry (no normalisation: the task trains on images in [0, 1]), the network, its single
    output, for float images (N, C, H, W) in [0, 1]."""

    outputs = ("brightness",)

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.preprocess = Preprocess.from_contract(contract)
        self.net = net

    def forward(self, images: Tensor) -> tuple[Tensor]:
        return (self.net(self.preprocess(images)).squeeze(1),)


def wrap(net: nn.Module, contract: dict[str, Any]) -> Exported:
    """The network ready for export."""
    return Exported(net, contract)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``predict`` takes no options of this task's."""


def records(
    outputs: dict[str, Tensor],
    contract: dict[str, Any],
    sizes: list[tuple[int, int]],
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Per image: its predicted brightness."""
    return [{"task": "brightness", "brightness": round(v, 6)} for v in outputs["brightness"].tolist()]


def line(record: dict[str, Any]) -> str:
    """``brightness 0.412``."""
    return f"brightness {record['brightness']:.3f}"


def picture(record: dict[str, Any], image: Tensor) -> np.ndarray:
    """The image itself."""
    return draw.rgb(image)


def save(
    record: dict[str, Any], image: Tensor, folder: Path, stem: str, options: dict[str, Any]
) -> list[Path]:
    """``<stem>.png``: the image."""
    path = folder / f"{stem}.png"
    path.write_bytes(draw.png(picture(record, image)))
    return [path]


def brightness(images: Tensor) -> Tensor:
    """What the task learns to predict, for the test's checks."""
    return torch.as_tensor(images).float().div(255.0).mean(dim=(1, 2, 3))
