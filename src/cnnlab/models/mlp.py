"""The course's multi-layer perceptron for MNIST: flatten, hidden layers with ReLU and dropout, classifier."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlab.models.base import Classifier, init_weights
from cnnlab.models.weights import load_run_weights


class MLP(Classifier):
    """Flatten the image, then ``hidden`` fully-connected layers; each hidden layer is one stage."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.2,
        batch_norm: bool = False,
        init: str = "default",
        weights: str | None = None,
    ) -> None:
        width = in_channels * image_size * image_size
        stages: list[nn.Module] = []
        for i, size in enumerate(hidden):
            layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            stages.append(nn.Sequential(*layers))
            width = size
        head = (
            nn.Linear(width, num_classes)
            if stages
            else nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))
        )
        super().__init__(stages, head)
        init_weights(self, init)
        self.weights_report = load_run_weights(self, weights)
