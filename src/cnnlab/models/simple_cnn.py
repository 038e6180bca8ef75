"""The course's from-scratch CNN: conv blocks (conv, optional batch norm, ReLU, pool, dropout), a head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlab.models.base import Classifier, init_weights
from cnnlab.models.weights import load_run_weights


def conv_block(
    c_in: int, c_out: int, convs: int, batch_norm: bool, dropout: float, pool: bool
) -> nn.Sequential:
    """``convs`` 3x3 convolutions with optional batch norm and ReLU, then 2x2 max pooling and dropout."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    if pool:
        layers.append(nn.MaxPool2d(2))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class SimpleCNN(Classifier):
    """One stage per entry of ``widths``; each halves the resolution while the image is larger than 1 px."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 1,
        batch_norm: bool = True,
        dropout: float = 0.0,
        head_hidden: int = 256,
        head_dropout: float = 0.3,
        init: str = "default",
        weights: str | None = None,
    ) -> None:
        if not widths:
            raise ValueError("model.widths must name at least one block width")
        stages, c_in, side = [], in_channels, image_size
        for width in widths:
            pool = side >= 2
            stages.append(conv_block(c_in, width, convs_per_block, batch_norm, dropout, pool))
            c_in, side = width, side // 2 if pool else side
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if head_hidden:
            layers += [nn.Linear(c_in, head_hidden), nn.ReLU(inplace=True), nn.Dropout(head_dropout)]
            c_in = head_hidden
        layers.append(nn.Linear(c_in, num_classes))
        super().__init__(stages, nn.Sequential(*layers))
        init_weights(self, init)
        self.weights_report = load_run_weights(self, weights)
