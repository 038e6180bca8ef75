"""torchvision's classic architectures cut into the ``Classifier`` contract: ordered stages, a new head.

Each class builds torchvision's network from scratch, adapts its first convolution to ``in_channels``,
regroups its modules into stages (stem first) and a head sized by ``num_classes``, then loads ``weights``
(see ``cnnlab.models.weights``): running the stages then the head is torchvision's own forward. The stages
keep torchvision's modules, which is how torchvision's pretrained tensors find their place.

``small_input`` adapts the stem to 28-32 px images, as CIFAR variants of these networks do; where it can, it
keeps the first kernel (and so its pretrained filters) and drops only its stride.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from cnnlab.models.base import Classifier, init_weights, mlp_head
from cnnlab.models.weights import adapt_input_conv, load_weights

#: torchvision's GoogLeNet and Inception v3 weights come from Google, trained on inputs scaled to [-1, 1];
#: torchvision rescales ImageNet-normalised inputs inside the network (transform_input), cnnlab asks the data
#: for this normalisation instead, which also holds for one-channel images
MINUS_ONE_TO_ONE = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])

Weights = str | Path | None

#: Inception v3's unpadded stem and reductions shrink a 75 px image to a 1x1 map; a smaller one vanishes
INCEPTION_MIN_SIZE = 75


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
        new.weight.data.copy_(adapt_input_conv(conv.weight.detach(), in_channels))
        if conv.bias is not None:
            new.bias.data.copy_(conv.bias.detach())
    return new


def without_classifier(build: Callable[[], nn.Module], init: Callable[[nn.Module], None]) -> nn.Module:
    """torchvision's network from ``build()`` with only its ``features`` in memory, initialised by ``init``.

    A small-input model replaces the classifier of VGG and AlexNet (120M and 58M parameters, most of each
    network) by a small head: built on the meta device, it takes neither memory nor the second that
    initialising it costs. Tensor names still say where pretrained weights belong.
    """
    with torch.device("meta"):
        net = build()
    net.features.to_empty(device="cpu")
    init(net.features)
    for m in net.features.modules():  # to_empty leaves buffers as they were in memory
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    return net


def reset_each(module: nn.Module) -> None:
    """PyTorch's default initialisation of every layer (torchvision's AlexNet keeps it)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def replace_first_conv(net: nn.Module, name: str, in_channels: int, **overrides: object) -> nn.Conv2d:
    """Swap ``net``'s first convolution ``name`` for an ``in_channels`` copy, in place, and return it."""
    conv = adapt_first_conv(net.get_submodule(name), in_channels, **overrides)
    # in place, so that torchvision's name for it still finds it when pretrained weights are loaded
    net.set_submodule(name, conv)
    return conv


def split_by_resolution(blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """The stem (first block) alone, then a new stage at the next block and at each one that down-samples."""
    stages: list[nn.Module] = [blocks[0]]
    current: nn.Sequential | None = None
    for block in blocks[1:]:
        if current is None or _downsamples(block):
            current = nn.Sequential()
            stages.append(current)
        current.append(block)
    return stages


def _downsamples(block: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in block.modules())


def _check_arch(arch: str, choices: Sequence[str], family: str) -> None:
    if arch not in choices:
        raise ValueError(f"model.arch={arch!r} is not a {family}; choose one of {', '.join(choices)}")


class ResNet(Classifier):
    """ResNet-18/34/50/101/152 (He et al., 2016): stem, four residual stages, pooled linear head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "resnet18",
        weights: Weights = None,
        small_input: bool = False,
        head_dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        _check_arch(arch, ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"), "ResNet")
        net = getattr(tvm, arch)(weights=None)
        if small_input:
            # a 3x3/1 conv and no max-pool, as the CIFAR ResNets; the 7x7 pretrained filters do not fit it
            replace_first_conv(net, "conv1", in_channels, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
            net.maxpool = nn.Identity()
        else:
            replace_first_conv(net, "conv1", in_channels)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        stages = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
        super().__init__(stages, mlp_head(net.fc.in_features, num_classes, head_dropout))
        init_weights(self, init)
        self.weights_report = load_weights(self, weights, arch, net)


class VGG(Classifier):
    """VGG-11/13/16/19 (Simonyan and Zisserman, 2015), optional batch norm; one stage per pooled block."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 224,
        depth: int = 16,
        batch_norm: bool = True,
        weights: Weights = None,
        small_input: bool = False,
        head_dropout: float = 0.5,
        init: str = "default",
    ) -> None:
        if depth not in (11, 13, 16, 19):
            raise ValueError(f"model.depth={depth} is not a VGG depth; choose 11, 13, 16 or 19")
        arch = f"vgg{depth}{'_bn' if batch_norm else ''}"
        build = functools.partial(getattr(tvm, arch), weights=None, dropout=head_dropout)
        # torchvision's VGG initialisation is cnnlab's kaiming scheme (convolutions fan-out, batch norm 1, 0)
        net = without_classifier(build, lambda m: init_weights(m, "kaiming")) if small_input else build()
        replace_first_conv(net, "features.0", in_channels)
        stages, block, side = [], [], image_size
        for layer in net.features:
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
            head = mlp_head(512, num_classes, head_dropout)
        else:
            classifier = list(net.classifier)
            classifier[-1] = nn.Linear(classifier[-1].in_features, num_classes)
            head = nn.Sequential(net.avgpool, nn.Flatten(), *classifier)
        super().__init__(stages, head)
        init_weights(self, init)
        self.weights_report = load_weights(self, weights, arch, net)


class AlexNet(Classifier):
    """AlexNet (Krizhevsky et al., 2012): one stage per convolution, conv1 to conv5 as the paper counts."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        weights: Weights = None,
        small_input: bool = False,
        head_dropout: float = 0.5,
        init: str = "default",
    ) -> None:
        build = functools.partial(tvm.alexnet, weights=None, dropout=head_dropout)
        net = without_classifier(build, reset_each) if small_input else build()
        # small images: the 11x11 filters at stride 1 (not 4), so three poolings leave 3x3 of a 32 px image
        replace_first_conv(
            net, "features.0", in_channels, **({"stride": (1, 1), "padding": (5, 5)} if small_input else {})
        )
        stages: list[nn.Sequential] = []
        for layer in net.features:
            if isinstance(layer, nn.Conv2d):
                stages.append(nn.Sequential())
            stages[-1].append(layer)
        if small_input:
            head = mlp_head(stages[-1][0].out_channels, num_classes, head_dropout)  # conv5's 256 channels
        else:
            classifier = list(net.classifier)
            classifier[-1] = nn.Linear(classifier[-1].in_features, num_classes)
            head = nn.Sequential(net.avgpool, nn.Flatten(), *classifier)
        super().__init__(stages, head)
        init_weights(self, init)
        self.weights_report = load_weights(self, weights, "alexnet", net)


class GoogLeNet(Classifier):
    """GoogLeNet, Inception v1 (Szegedy et al., 2015), without its auxiliary classifiers; five stages.

    torchvision's pretrained weights expect inputs scaled to [-1, 1]: ``preprocessing`` says so (mean and std
    0.5) where torchvision would rescale ImageNet-normalised inputs inside the network.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        weights: Weights = None,
        small_input: bool = False,
        head_dropout: float = 0.2,
        init: str = "default",
    ) -> None:
        # the auxiliary classifiers helped training from scratch at ImageNet scale; torchvision drops them too
        net = tvm.googlenet(
            weights=None, aux_logits=False, transform_input=False, init_weights=True, dropout=head_dropout
        )
        if small_input:
            # the 7x7 filters at stride 1 and no first max-pool: 4x4 maps at the end of a 32 px image
            replace_first_conv(net, "conv1.conv", in_channels, stride=(1, 1))
            net.maxpool1 = nn.Identity()
        else:
            replace_first_conv(net, "conv1.conv", in_channels)
        stages = [
            nn.Sequential(net.conv1, net.maxpool1),
            nn.Sequential(net.conv2, net.conv3, net.maxpool2),
            nn.Sequential(net.inception3a, net.inception3b, net.maxpool3),
            nn.Sequential(
                net.inception4a,
                net.inception4b,
                net.inception4c,
                net.inception4d,
                net.inception4e,
                net.maxpool4,
            ),
            nn.Sequential(net.inception5a, net.inception5b),
        ]
        super().__init__(stages, mlp_head(net.fc.in_features, num_classes, head_dropout))
        init_weights(self, init)
        self.weights_report = load_weights(self, weights, "googlenet", net, normalisation=MINUS_ONE_TO_ONE)


class InceptionV3(Classifier):
    """Inception v3 (Szegedy et al., 2016), without its auxiliary classifier; images of at least 75 px.

    torchvision's pretrained weights expect inputs scaled to [-1, 1]: ``preprocessing`` says so (mean and std
    0.5) where torchvision would rescale ImageNet-normalised inputs inside the network.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 299,
        weights: Weights = None,
        head_dropout: float = 0.5,
        init: str = "default",
    ) -> None:
        if image_size < INCEPTION_MIN_SIZE:
            raise ValueError(
                f"InceptionV3 needs images of at least {INCEPTION_MIN_SIZE} px and data.image_size="
                f"{image_size}: resize the data (the paper uses data.image_size=299) or choose another model"
            )
        net = tvm.inception_v3(
            weights=None, aux_logits=False, transform_input=False, init_weights=True, dropout=head_dropout
        )
        replace_first_conv(net, "Conv2d_1a_3x3.conv", in_channels)
        stages = [
            nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1),
            nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2),
            nn.Sequential(net.Mixed_5b, net.Mixed_5c, net.Mixed_5d),
            nn.Sequential(net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e),
            nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c),
        ]
        super().__init__(stages, mlp_head(net.fc.in_features, num_classes, head_dropout))
        self.min_size = INCEPTION_MIN_SIZE  # an attribute, as TorchScript reads no module globals
        init_weights(self, init)
        self.weights_report = load_weights(self, weights, "inception_v3", net, normalisation=MINUS_ONE_TO_ONE)

    def forward_features(self, x: Tensor) -> Tensor:
        # a clear message instead of a convolution failing deep inside on a vanished feature map
        if x.shape[-2] < self.min_size or x.shape[-1] < self.min_size:
            raise ValueError(
                f"InceptionV3 needs images of at least {self.min_size} px, got {x.shape[-2]}x{x.shape[-1]}"
            )
        # the loop of Classifier.forward_features: TorchScript (export) cannot compile super()
        for stage in self.stages:
            x = stage(x)
        return x


class MobileNetV3(Classifier):
    """MobileNetV3 small or large (Howard et al., 2019): stem, then one stage per resolution."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "mobilenet_v3_large",
        weights: Weights = None,
        small_input: bool = False,
        head_dropout: float = 0.2,
        init: str = "default",
    ) -> None:
        _check_arch(arch, ("mobilenet_v3_small", "mobilenet_v3_large"), "MobileNetV3")
        net = getattr(tvm, arch)(weights=None, dropout=head_dropout)
        # small images: the stem's 3x3 filters at stride 1, so a 32 px image ends on 2x2, not 1x1
        replace_first_conv(net, "features.0.0", in_channels, **({"stride": (1, 1)} if small_input else {}))
        classifier = list(net.classifier)  # Linear to 1024/1280, Hardswish, Dropout: kept, pretrained
        classifier[-1] = nn.Linear(classifier[-1].in_features, num_classes)
        head = nn.Sequential(net.avgpool, nn.Flatten(), *classifier)
        super().__init__(split_by_resolution(net.features), head)
        init_weights(self, init)
        self.weights_report = load_weights(self, weights, arch, net)


class EfficientNet(Classifier):
    """EfficientNet B0-B7 and V2 S/M/L (Tan and Le, 2019 and 2021): stem, then one stage per resolution."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "efficientnet_b0",
        weights: Weights = None,
        small_input: bool = False,
        head_dropout: float | None = None,
        init: str = "default",
    ) -> None:
        variants = [f"efficientnet_b{i}" for i in range(8)] + [f"efficientnet_v2_{s}" for s in "sml"]
        _check_arch(arch, variants, "EfficientNet")
        # head_dropout None keeps torchvision's per-variant rate (0.2 for B0 up to 0.5 for B7)
        net = getattr(tvm, arch)(weights=None, **({} if head_dropout is None else {"dropout": head_dropout}))
        replace_first_conv(net, "features.0.0", in_channels, **({"stride": (1, 1)} if small_input else {}))
        dropout, linear = net.classifier
        super().__init__(
            split_by_resolution(net.features), mlp_head(linear.in_features, num_classes, dropout.p)
        )
        init_weights(self, init)
        self.weights_report = load_weights(self, weights, arch, net)


class ConvNeXt(Classifier):
    """ConvNeXt tiny/small/base/large (Liu et al., 2022): patchify stem, then four stages."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "convnext_tiny",
        weights: Weights = None,
        small_input: bool = False,
        head_dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        _check_arch(arch, ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"), "ConvNeXt")
        net = getattr(tvm, arch)(weights=None)
        # small images: the 4x4 patchify filters at stride 2 (not 4), so a 32 px image ends on 2x2
        replace_first_conv(
            net, "features.0.0", in_channels, **({"stride": (2, 2), "padding": (1, 1)} if small_input else {})
        )
        norm, flatten, linear = net.classifier  # the pretrained LayerNorm stays in the head
        head = nn.Sequential(
            net.avgpool, norm, flatten, nn.Dropout(head_dropout), nn.Linear(linear.in_features, num_classes)
        )
        super().__init__(split_by_resolution(net.features), head)
        init_weights(self, init)
        self.weights_report = load_weights(self, weights, arch, net)
