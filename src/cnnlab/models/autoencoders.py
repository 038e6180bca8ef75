"""The course's autoencoders: a fully-connected one and a convolutional one, each an encoder of ``stages``.

Their input is an image scaled to [0, 1], not normalised with a mean and std: the autoencoding task trains
the sigmoid output, which lives in [0, 1], against that same image. For the same reason ``preprocessing``
stays None even when the stages come from a checkpoint trained on normalised images.

``encode`` runs the stages (the last one gives the code), ``decode`` turns a code back into an image, and
``forward`` is ``decode(encode(x))``, an image of the input's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import ClassVar

from torch import Tensor, nn
from torch.nn import functional as F

from cnnlab.models.base import StagedNet, init_weights
from cnnlab.models.simple_cnn import conv_block
from cnnlab.models.weights import load_run_weights


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """``x`` with zeros below and to the right, up to a height and width divisible by ``multiple``."""
    pad_h = (multiple - x.shape[-2] % multiple) % multiple
    pad_w = (multiple - x.shape[-1] % multiple) % multiple
    return F.pad(x, [0, pad_w, 0, pad_h])


class LinearAutoencoder(StagedNet):
    """Flatten, fully-connected layers down to a ``bottleneck`` code and mirrored back, sigmoid output.

    The defaults are the course's 784-256-32-256-784 network for 28 px grey images; each encoder layer
    (Linear + ReLU) is one stage.
    """

    output: ClassVar[str] = "image"

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        hidden: Sequence[int] = (256,),
        bottleneck: int = 32,
        init: str = "default",
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"model.bottleneck={bottleneck}: give the size of the code, at least 1")
        inputs = in_channels * image_size * image_size
        sizes = [inputs, *hidden, bottleneck]
        stages: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(pairwise(sizes)):
            layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
            stages.append(nn.Sequential(*layers, nn.Linear(n_in, n_out), nn.ReLU(inplace=True)))
        self.stages = nn.ModuleList(stages)
        back = sizes[::-1]
        layers = []
        for n_in, n_out in pairwise(back[:-1]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        layers += [
            nn.Linear(back[-2], inputs),
            nn.Sigmoid(),
            nn.Unflatten(1, (in_channels, image_size, image_size)),
        ]
        self.decoder = nn.Sequential(*layers)
        init_weights(self, init)
        self.weights_report = load_run_weights(self, weights)
        self.preprocessing = None

    def encode(self, x: Tensor) -> Tensor:
        """The code of each image (N, bottleneck)."""
        for stage in self.stages:
            x = stage(x)
        return x

    def decode(self, code: Tensor) -> Tensor:
        """The image (N, C, H, W) of each code."""
        return self.decoder(code)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def up_block(c_in: int, c_out: int, upsample: str, batch_norm: bool) -> nn.Sequential:
    """Double the resolution: nearest-neighbour upsampling + 3x3 conv, or a 2x2 transposed conv; then ReLU."""
    if upsample == "interpolate":
        # resize-then-convolve avoids the checkerboard artefacts of transposed convolutions (Odena et al.)
        layers: list[nn.Module] = [
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm),
        ]
    elif upsample == "transposed":
        layers = [nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=not batch_norm)]
    else:
        raise ValueError(
            f"model.upsample={upsample!r}: choose interpolate (nearest-neighbour upsampling + conv) "
            "or transposed (ConvTranspose2d)"
        )
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ConvAutoencoder(StagedNet):
    """Conv blocks that halve the resolution (one stage per width), a mirrored decoder, sigmoid output.

    ``bottleneck=None`` keeps the last feature map as the code; an integer adds a stage, a 1x1 conv to that
    many channels, so the code stays a map (N, bottleneck, h, w) and the network takes any image size.
    Images whose side is not a multiple of ``2 ** len(widths)`` are padded inside the network and the output
    cropped back, so the output always has the input's shape.
    """

    output: ClassVar[str] = "image"

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        widths: Sequence[int] = (32, 64, 128),
        bottleneck: int | None = None,
        upsample: str = "interpolate",
        batch_norm: bool = True,
        init: str = "default",
        weights: str | None = None,
    ) -> None:
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("model.widths must name at least one block width")
        if bottleneck is not None and bottleneck < 1:
            raise ValueError(f"model.bottleneck={bottleneck}: give a number of channels, or null for none")
        self.image_size = image_size
        self.multiple = 2 ** len(widths)
        stages: list[nn.Module] = []
        for c_in, c_out in pairwise([in_channels, *widths]):
            stages.append(conv_block(c_in, c_out, 1, batch_norm, 0.0, pool=True))
        decoder: list[nn.Module] = []
        if bottleneck is not None:
            stages.append(nn.Sequential(nn.Conv2d(widths[-1], bottleneck, 1), nn.ReLU(inplace=True)))
            decoder += [nn.Conv2d(bottleneck, widths[-1], 1), nn.ReLU(inplace=True)]
        self.stages = nn.ModuleList(stages)
        # mirrored: the last upsampling returns to the first width, then a conv maps it to the image
        for c_in, c_out in pairwise([*widths[::-1], widths[0]]):
            decoder.append(up_block(c_in, c_out, upsample, batch_norm))
        decoder += [nn.Conv2d(widths[0], in_channels, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)
        init_weights(self, init)
        self.weights_report = load_run_weights(self, weights)
        self.preprocessing = None

    def encode(self, x: Tensor) -> Tensor:
        """The code of each image: a map (N, c, h, w), c the last width or ``bottleneck``."""
        x = pad_to_multiple(x, self.multiple)
        for stage in self.stages:
            x = stage(x)
        return x

    def decode(self, code: Tensor, size: list[int] | None = None) -> Tensor:
        """The image (N, C, H, W) of each code, of ``size`` (H, W); by default ``image_size`` square."""
        image = self.decoder(code)
        if size is None:
            return image[:, :, : self.image_size, : self.image_size]
        return image[:, :, : size[0], : size[1]]

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x), [x.shape[-2], x.shape[-1]])
