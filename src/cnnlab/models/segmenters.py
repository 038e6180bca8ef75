"""torchvision's semantic segmentation networks (FCN, DeepLabV3, LR-ASPP) in the ``StagedNet`` contract.

Each class builds torchvision's network the way its builder does (the same modules under the same names, so
torchvision's weights files load as they are), adapts the first convolution to ``in_channels`` and returns
the logits ``out`` at the input's size. The stages are the backbone's own modules (stem, then one stage per
resolution): freezing a stage freezes the network itself, and nothing is registered twice.

``weights`` names torchvision's segmentation weights (COCO images with the 20 VOC classes and background):
every tensor that fits is loaded, the classifiers sized for another number of classes are left out.
``weights_backbone`` names ImageNet weights (of a classifier) for the backbone alone. Both are read from the
torch hub cache (see ``cnnlab.models.weights``). The network takes images normalised by the data, with the
mean and std in ``preprocessing`` when there are weights.

The weights helpers here serve ``cnnlab.models.detectors`` too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum
from torchvision.models.segmentation import deeplabv3, fcn, lraspp

from cnnlab.models.base import StagedNet
from cnnlab.models.torchvision_nets import replace_first_conv
from cnnlab.models.weights import (
    WeightsReport,
    adapt_input_conv,
    hub_file,
    read_hub_state_dict,
    torchvision_weights,
    weights_preprocessing,
)

log = logging.getLogger(__name__)

FCN_ARCHS = ("fcn_resnet50", "fcn_resnet101")
DEEPLABV3_ARCHS = ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101")
LRASPP_ARCHS = ("lraspp_mobilenet_v3_large",)


# --- weights shared by the dense networks (segmenters and detectors) ----------------------------------------


def is_null(weights: str | None) -> bool:
    """Whether a weights setting means no weights (null, None or an empty string)."""
    return weights is None or str(weights).strip().lower() in ("", "none", "null")


def weights_named(arch: str, name: str, key: str) -> WeightsEnum:
    """torchvision's weights ``name`` for ``arch``; the error names the config ``key`` and the choices."""
    try:
        return torchvision_weights(arch, str(name))
    except ValueError:
        choices = ", ".join(tvm.get_model_weights(arch).__members__)
        raise ValueError(
            f"model.{key}={name!r} is not a torchvision weights name for {arch}; choose one of {choices}, "
            "or null"
        ) from None


def tensor_names(source: nn.Module, net: nn.Module) -> dict[str, str]:
    """The name in ``net`` of each tensor of ``source`` that ``net`` holds (the same tensor, not a copy)."""
    ours = {id(t): name for name, t in net.state_dict(keep_vars=True).items()}
    return {name: ours[id(t)] for name, t in source.state_dict(keep_vars=True).items() if id(t) in ours}


def load_fitting(
    net: nn.Module, weights: WeightsEnum, arch: str, source: nn.Module, first_conv: nn.Conv2d
) -> WeightsReport:
    """Load torchvision's ``weights`` (a state dict of ``source``'s layout) into ``net``: what fits, reported.

    ``source`` is the torchvision module whose tensor names the file uses and whose tensors ``net`` holds;
    the filters of ``first_conv`` are adapted to its input channels.
    """
    state = read_hub_state_dict(weights, arch)
    report = WeightsReport(f"torchvision's {arch} {weights.name} ({hub_file(weights)})")
    names = tensor_names(source, net)
    first = tensor_names(first_conv, net)["weight"]
    target = net.state_dict()
    matched: dict[str, Tensor] = {}
    for key, tensor in state.items():
        name = names.get(key)
        if name is None:
            report.left_out[key] = _absent_reason(key, names)
            continue
        want = target[name].shape
        if name == first and tensor.shape != want:
            tensor = adapt_input_conv(tensor, want[1])
            report.adapted.append(name)
        if tensor.shape != want:
            classes = tensor.shape[1:] == want[1:]  # only the outputs differ: a classifier
            report.left_out[key] = "sized for another number of classes" if classes else "another shape here"
            continue
        matched[name] = tensor
    net.load_state_dict(matched, strict=False)
    report.loaded = list(matched)
    log.info(report.summary())
    return report


def _absent_reason(key: str, names: Mapping[str, str]) -> str:
    module = key.rpartition(".")[0]
    if key.endswith(".num_batches_tracked") and f"{module}.running_mean" in names:
        return "a frozen batch norm's count of batches"
    if key.startswith("aux_classifier."):
        return "the auxiliary head: not in this network (model.aux_loss=false)"
    return "not in this network"


def refuse_both(weights: str | None, weights_backbone: str | None, cls: str) -> None:
    """Refuse ``weights`` with ``weights_backbone``: the full weights already hold a backbone."""
    if not is_null(weights) and not is_null(weights_backbone):
        raise ValueError(
            f"{cls}: model.weights={weights!r} and model.weights_backbone={weights_backbone!r} both set; the "
            "full weights include the backbone, so set model.weights_backbone=null (or model.weights=null to "
            "start from ImageNet weights in the backbone only)"
        )


def check_choice(key: str, value: str, choices: Sequence[str], what: str) -> None:
    """Refuse a ``value`` of ``model.<key>`` outside ``choices``, listing them."""
    if value not in choices:
        raise ValueError(f"model.{key}={value!r} is not a {what}; choose one of {', '.join(choices)}")


# --- stages -------------------------------------------------------------------------------------------------


def resnet_stages(body: nn.Module) -> list[nn.Module]:
    """A ResNet body's stem (conv1, bn1, relu, maxpool), then layer1 to layer4: its own modules."""
    stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool)
    return [stem, body.layer1, body.layer2, body.layer3, body.layer4]


def mobilenet_stages(blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """A MobileNetV3's stem, then a stage at the first block and at each block torchvision marks strided.

    The marks (``_is_cn``) stay where a dilated network keeps its resolution, so the stages are those of
    the classifier (``split_by_resolution``) whether the last one is dilated or not.
    """
    stages: list[nn.Module] = [blocks[0]]
    for i, block in enumerate(blocks[1:]):
        if i == 0 or getattr(block, "_is_cn", False):
            stages.append(nn.Sequential())
        stages[-1].append(block)
    return stages


# --- the networks -------------------------------------------------------------------------------------------


class Segmenter(StagedNet):
    """A torchvision segmentation network: class logits for every pixel, stages from its backbone."""

    output: ClassVar[str] = "pixel_scores"
    # ``stages`` regroups modules of ``model``; TorchScript needs none of it
    __jit_unused_properties__: ClassVar[list[str]] = ["stages"]

    def __init__(
        self,
        model: nn.Module,
        backbone: nn.Module,
        arch: str,
        weights: str | None,
        weights_backbone: str | None,
    ) -> None:
        """``model`` is torchvision's network built on ``backbone``, the classifier its backbone came from."""
        super().__init__()
        self.model = model
        self.aux_loss = getattr(model, "aux_classifier", None) is not None
        body = model.backbone
        is_resnet = hasattr(body, "layer4")
        # a plain list: the modules are registered once, under ``model``
        self._stages = resnet_stages(body) if is_resnet else mobilenet_stages(list(body.children()))
        first_conv = body.conv1 if is_resnet else body["0"][0]
        refuse_both(weights, weights_backbone, type(self).__name__)
        self.preprocessing = None
        self.weights_report: WeightsReport | None = None
        if not is_null(weights):
            w = weights_named(arch, str(weights), "weights")
            self.weights_report = load_fitting(self, w, arch, model, first_conv)
            # mean, std and the shorter side they resize to (520 px); segmentation weights crop nothing
            self.preprocessing = weights_preprocessing(w, first_conv.in_channels)
        elif not is_null(weights_backbone):
            backbone_arch = arch.split("_", 1)[1]
            w = weights_named(backbone_arch, str(weights_backbone), "weights_backbone")
            self.weights_report = load_fitting(self, w, backbone_arch, backbone, first_conv)
            # the classifier's crop and resize sizes belong to its evaluation, not to a dense network
            found = weights_preprocessing(w, first_conv.in_channels)
            self.preprocessing = {"mean": found["mean"], "std": found["std"]}

    @property
    def stages(self) -> list[nn.Module]:
        """The backbone's stages, input first: modules of ``model``, not copies."""
        return list(self._stages)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The output of every backbone stage for a normalised batch, in order."""
        outputs = []
        for stage in self._stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (N, num_classes, H, W) at the size of ``x``."""
        return self.model(x)["out"]

    def forward_dict(self, x: Tensor) -> dict[str, Tensor]:
        """torchvision's outputs: the logits under ``out``, the auxiliary head's under ``aux`` if aux_loss."""
        return self.model(x)


def _resnet(arch: str, in_channels: int) -> tvm.ResNet:
    # dilated layer3 and layer4 keep 1/8 of the input's resolution, as torchvision's builders do
    net = getattr(tvm, arch)(weights=None, replace_stride_with_dilation=[False, True, True])
    replace_first_conv(net, "conv1", in_channels)
    return net


def _mobilenet(in_channels: int) -> tvm.MobileNetV3:
    net = tvm.mobilenet_v3_large(weights=None, dilated=True)
    replace_first_conv(net, "features.0.0", in_channels)
    return net


class FCN(Segmenter):
    """Fully convolutional network (Long et al., 2015) on a dilated ResNet-50/101; stem and four stages."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "fcn_resnet50",
        weights: str | None = None,
        weights_backbone: str | None = None,
        aux_loss: bool = False,
    ) -> None:
        check_choice("arch", arch, FCN_ARCHS, "FCN")
        backbone = _resnet(arch.split("_", 1)[1], in_channels)
        model = fcn._fcn_resnet(backbone, num_classes, aux_loss)
        super().__init__(model, backbone, arch, weights, weights_backbone)


class DeepLabV3(Segmenter):
    """DeepLabV3 (Chen et al., 2017): atrous spatial pyramid pooling on MobileNetV3-Large or ResNet-50/101."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "deeplabv3_mobilenet_v3_large",
        weights: str | None = None,
        weights_backbone: str | None = None,
        aux_loss: bool = False,
    ) -> None:
        check_choice("arch", arch, DEEPLABV3_ARCHS, "DeepLabV3")
        if arch.endswith("mobilenet_v3_large"):
            backbone = _mobilenet(in_channels)
            model = deeplabv3._deeplabv3_mobilenetv3(backbone, num_classes, aux_loss)
        else:
            backbone = _resnet(arch.split("_", 1)[1], in_channels)
            model = deeplabv3._deeplabv3_resnet(backbone, num_classes, aux_loss)
        super().__init__(model, backbone, arch, weights, weights_backbone)


class LRASPP(Segmenter):
    """Lite R-ASPP (Howard et al., 2019) on MobileNetV3-Large: the lightest segmenter, no auxiliary head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        arch: str = "lraspp_mobilenet_v3_large",
        weights: str | None = None,
        weights_backbone: str | None = None,
        aux_loss: bool = False,
    ) -> None:
        check_choice("arch", arch, LRASPP_ARCHS, "LR-ASPP")
        if aux_loss:
            raise ValueError(
                "model.aux_loss=true: LR-ASPP has no auxiliary head; set it to false, or choose "
                "model=deeplabv3 or model=fcn for an auxiliary loss"
            )
        backbone = _mobilenet(in_channels)
        model = lraspp._lraspp_mobilenetv3(backbone, num_classes)
        super().__init__(model, backbone, arch, weights, weights_backbone)
