"""LeNet-5 (LeCun et al., 1998): two conv + pool stages and three fully-connected layers."""

from __future__ import annotations

from torch import nn

from cnnlab.models.base import Classifier, init_weights
from cnnlab.models.weights import load_run_weights


class LeNet5(Classifier):
    """LeNet-5 with ReLU and max pooling; the classic 32 px design, padded so 28 px inputs work too."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        init: str = "default",
        weights: str | None = None,
    ) -> None:
        # padding 2 on the first conv keeps the original 32 px geometry for 28 px MNIST digits
        pad = 2 if image_size < 32 else 0
        stages = [
            nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        ]
        side = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet-5 needs images of at least 16 px, got data.image_size={image_size}")
        head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )
        super().__init__(stages, head)
        init_weights(self, init)
        self.weights_report = load_run_weights(self, weights)
