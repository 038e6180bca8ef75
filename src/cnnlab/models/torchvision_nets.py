"""torchvision's classic architectures cut into the ``Classifier`` contract: ordered stages, a new head.

Each class builds torchvision's network, regroups its modules into stages (stem first) and a head sized by
``num_classes``, and adapts the first convolution to ``in_channels``. ``small_input`` replaces the stem's
aggressive down-sampling for 28-32 px images, as CIFAR variants of these networks do.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from cnnlab.models.base import Classifier, init_weights


def adapt_first_conv(conv: nn.Conv2d, in_channels: int, **overrides: object) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs (and any changed geometry), reusing its weights."""
    kwargs = dict(
        in_channels=in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    kwargs.update(overrides)
    new = nn.Conv2d(**kwargs)  # type: ignore[arg-type]
    if new.weight.shape[2:] == conv.weight.shape[2:]:
        weight = conv.weight.detach()
        if in_channels != conv.in_channels:
            # grey from RGB filters: their sum keeps the response to a grey image (as timm does)
            weight = weight.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) * (1.0 if in_channels == 1 else
                                                                                    conv.in_channels / in_channels)
        new.weight.data.copy_(weight)
        if conv.bias is not None:
            new.bias.data.copy_(conv.bias.detach())
    return new


class ResNet(Classifier):
    """ResNet-18/34/50/101 (He et al., 2016): stem, four residual stages, pooled linear head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "resnet18",
        small_input: bool = False,
        head_dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        if arch not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
            raise ValueError(f"model.arch={arch!r} is not a ResNet; choose resnet18, resnet34, resnet50 or resnet101")
        net = getattr(tvm, arch)(weights=None)
        if small_input:
            conv1, pool = adapt_first_conv(net.conv1, in_channels, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)), nn.Identity()
        else:
            conv1, pool = adapt_first_conv(net.conv1, in_channels), net.maxpool
        stem = nn.Sequential(conv1, net.bn1, net.relu, pool)
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(head_dropout),
                             nn.Linear(net.fc.in_features, num_classes))
        super().__init__([stem, net.layer1, net.layer2, net.layer3, net.layer4], head)
        init_weights(self, init)


class VGG(Classifier):
    """VGG-11/13/16/19 (Simonyan and Zisserman, 2015), optional batch norm; one stage per pooled block."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 224,
        depth: int = 16,
        batch_norm: bool = True,
        small_input: bool = False,
        head_dropout: float = 0.5,
        init: str = "default",
    ) -> None:
        if depth not in (11, 13, 16, 19):
            raise ValueError(f"model.depth={depth} is not a VGG depth; choose 11, 13, 16 or 19")
        net = getattr(tvm, f"vgg{depth}{'_bn' if batch_norm else ''}")(weights=None)
        features = list(net.features)
        features[0] = adapt_first_conv(features[0], in_channels)
        stages, block, side = [], [], image_size
        for layer in features:
            if isinstance(layer, nn.MaxPool2d):
                # below 2 px another pooling would leave nothing (28 px MNIST reaches 1 px after four)
                block.append(layer if side >= 2 else nn.Identity())
                side //= 2
                stages.append(nn.Sequential(*block))
                block = []
            else:
                block.append(layer)
        if small_input:
            # 32 px images leave a 1x1 map after five poolings: a 512-wide linear head, not 4096x4096 on 7x7
            head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(head_dropout),
                                 nn.Linear(512, num_classes))
        else:
            classifier = list(net.classifier)
            classifier[-1] = nn.Linear(classifier[-1].in_features, num_classes)
            head = nn.Sequential(net.avgpool, nn.Flatten(), *classifier)
        super().__init__(stages, head)
        init_weights(self, init)
