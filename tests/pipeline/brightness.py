"""A second task built from new files alone: predict an image's mean brightness, lower error is better.

It lives in the test suite to prove that a task is a module plus a config: nothing of cnnlab's generic code
names it, yet checkpointing, testing, the sweep report and export all follow its metric direction.
"""

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from cnnlab.data.samples import SampleSpec
from cnnlab.tasks.base import BaseTask

OUTPUT = "the predicted mean brightness (N,)"


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
    """Scale to [0, 1], the network, its single output."""

    serving: str
    in_channels: int

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.net, self.serving, self.in_channels = net, __name__, int(contract["in_channels"])

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.float() / 255.0).squeeze(1)


def brightness(images: Tensor) -> Tensor:
    """What the task learns to predict, for the test's checks."""
    return torch.as_tensor(images).float().div(255.0).mean(dim=(1, 2, 3))
