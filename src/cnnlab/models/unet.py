"""UNet (Ronneberger et al., 2015): an encoder of ``stages``, a decoder fed by their outputs as skips."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import ClassVar

import torch
from torch import Tensor, nn

from cnnlab.models.autoencoders import pad_to_multiple
from cnnlab.models.base import StagedNet, init_weights
from cnnlab.models.simple_cnn import conv_block
from cnnlab.models.weights import load_run_weights


class UpBlock(nn.Module):
    """Double the resolution, halve the channels, concatenate the skip, then two 3x3 convs."""

    def __init__(self, c_in: int, c_out: int, upsample: str, batch_norm: bool) -> None:
        super().__init__()
        if upsample == "bilinear":
            # a 1x1 conv is enough to halve the channels: the two 3x3 convs after the skip mix space
            self.up: nn.Module = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False), nn.Conv2d(c_in, c_out, 1)
            )
        elif upsample == "transposed":
            self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        else:
            raise ValueError(
                f"model.upsample={upsample!r}: choose bilinear (bilinear upsampling + conv) "
                "or transposed (ConvTranspose2d)"
            )
        self.convs = conv_block(2 * c_out, c_out, 2, batch_norm, 0.0, pool=False)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class UNet(StagedNet):
    """One encoder stage per width (two 3x3 convs, each stage after the first at half the resolution),
    a decoder that climbs back through the same widths, and a 1x1 conv to per-pixel class scores.

    Images whose side is not a multiple of ``2 ** (len(widths) - 1)`` are padded inside the network and the
    scores cropped back, so the scores always have the input's height and width.
    """

    output: ClassVar[str] = "pixel_scores"

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: Sequence[int] = (32, 64, 128, 256),
        batch_norm: bool = True,
        upsample: str = "bilinear",
        init: str = "default",
        weights: str | None = None,
    ) -> None:
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("model.widths must name at least one stage width")
        self.multiple = 2 ** (len(widths) - 1)
        stages: list[nn.Module] = [conv_block(in_channels, widths[0], 2, batch_norm, 0.0, pool=False)]
        for c_in, c_out in pairwise(widths):
            stages.append(
                nn.Sequential(nn.MaxPool2d(2), *conv_block(c_in, c_out, 2, batch_norm, 0.0, pool=False))
            )
        self.stages = nn.ModuleList(stages)
        # deepest first: block i joins the map from below with the output of stage len(widths) - 2 - i
        self.decoder = nn.ModuleList(
            UpBlock(c_in, c_out, upsample, batch_norm) for c_in, c_out in pairwise(widths[::-1])
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        init_weights(self, init)
        self.weights_report = load_run_weights(self, weights)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2], x.shape[-1]
        skips = self.forward_stages(pad_to_multiple(x, self.multiple))
        y = skips[-1]
        for i, block in enumerate(self.decoder):
            y = block(y, skips[-2 - i])
        scores = self.head(y)
        # rows and columns picked rather than sliced: an exported graph then keeps any input size open
        # (a slice's end would be compared with the padded size)
        rows, columns = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
        return scores.index_select(-2, rows).index_select(-1, columns)
