"""torchvision's one-stage detectors (RetinaNet, FCOS, SSDLite) in the ``StagedNet`` contract.

Each class assembles torchvision's detector from torchvision's parts, on a backbone small enough for CPU runs
(ResNet-18/34/50 with a feature pyramid; MobileNetV3 for SSDLite), sized for small images: ``image_size``
sets the size torchvision resizes to (not its 800/1333 px), and the default anchors fit objects of 8-50 px.

The detector takes a list of float images (C, H, W) in [0, 1] of any sizes; torchvision's transform inside
normalises, resizes and batches them, and maps the boxes back to each image's own pixels. In training mode
it takes targets (``boxes`` XYXY in pixels, ``labels``) and returns torchvision's losses; in eval mode it
returns one dict of ``boxes``, ``scores`` and ``labels`` per image. Labels are cnnlab's: 0-based indices
into the object classes. torchvision reserves 0 for the background, so the network has one output more,
target labels go in shifted by one and predicted labels come out shifted back.

``weights`` names torchvision's COCO detection weights (ResNet-50 or MobileNetV3-Large only): every tensor
that fits is loaded, the class-score head of another number of classes is left out. ``weights_backbone``
names ImageNet weights for the backbone alone. Both are read from the torch hub cache. The data should stay
in [0, 1]: the network normalises by itself, so ``preprocessing`` asks for nothing (an empty dict) when
weights are loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection import ssdlite
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.ssd import SSD
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from cnnlab.models.base import StagedNet
from cnnlab.models.segmenters import (
    check_choice,
    is_null,
    load_fitting,
    refuse_both,
    resnet_stages,
    weights_named,
)
from cnnlab.models.torchvision_nets import replace_first_conv, split_by_resolution
from cnnlab.models.weights import WeightsReport, fit_channels

RESNETS = ("resnet18", "resnet34", "resnet50")
MOBILENETS = ("mobilenet_v3_large", "mobilenet_v3_small")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
#: torchvision's default longest side for its shortest, 1333/800: the same aspect cap at any image_size
MAX_ASPECT = 1333 / 800


class Detector(StagedNet):
    """A torchvision one-stage detector with cnnlab's 0-based labels; stages from its backbone."""

    output: ClassVar[str] = "detections"
    # ``stages`` regroups modules of ``model``; TorchScript needs none of it
    __jit_unused_properties__: ClassVar[list[str]] = ["stages"]

    def __init__(self, model: nn.Module, stages: list[nn.Module]) -> None:
        """``model``: torchvision's detector for num_classes + 1 labels; ``stages``: its backbone modules."""
        super().__init__()
        self.model = model
        # scripted, torchvision's detector warns that it returns (losses, detections); ``_run`` handles both
        model._has_warned = True
        # a plain list: the modules are registered once, under ``model``
        self._stages = stages
        self.preprocessing = None
        self.weights_report: WeightsReport | None = None

    @property
    def stages(self) -> list[nn.Module]:
        """The backbone's stages, input first: modules of ``model``, not copies."""
        return list(self._stages)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The output of every backbone stage for a batch (N, C, H, W) in [0, 1], normalised as in forward."""
        transform = self.model.transform
        mean = torch.as_tensor(transform.image_mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.as_tensor(transform.image_std, dtype=x.dtype, device=x.device)[:, None, None]
        x = (x - mean) / std
        outputs = []
        for stage in self._stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the dict of torchvision's losses for ``targets``. Eval: the detections of each image."""
        if not self.training:
            return self.detect(images)
        if targets is None:
            raise ValueError(
                "a detector in training mode needs targets: one dict per image with boxes (N, 4, XYXY in "
                "pixels) and labels (N, 0-based); call .eval() to detect"
            )
        shifted: list[dict[str, Tensor]] = []
        for target in targets:
            moved: dict[str, Tensor] = {}
            for key, value in target.items():
                moved[key] = value
            moved["labels"] = target["labels"] + 1  # torchvision's 0 is the background
            shifted.append(moved)
        losses, _ = self._run(images, shifted)
        return losses

    @torch.jit.export
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Boxes (XYXY, in each image's pixels), scores and 0-based labels for each image (eval mode)."""
        _, detections = self._run(images, None)
        results: list[dict[str, Tensor]] = []
        for found in detections:
            # RetinaNet and FCOS score the background column like any class: never report it
            keep = found["labels"] > 0
            results.append(
                {
                    "boxes": found["boxes"][keep],
                    "scores": found["scores"][keep],
                    "labels": found["labels"][keep] - 1,
                }
            )
        return results

    def _run(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        # torchvision's detectors return losses or detections in eager mode, both as a tuple in TorchScript
        if torch.jit.is_scripting():
            return self.model(images, targets)
        out = self.model(images, targets)
        if self.model.training:
            return out, []
        return {}, out

    def _load(
        self,
        weights: str | None,
        weights_backbone: str | None,
        arch: str,
        backbone_arch: str,
        classifier: nn.Module,
        first_conv: nn.Conv2d,
    ) -> None:
        refuse_both(weights, weights_backbone, type(self).__name__)
        if not is_null(weights):
            w = weights_named(arch, str(weights), "weights")
            self.weights_report = load_fitting(self, w, arch, self.model, first_conv)
        elif not is_null(weights_backbone):
            w = weights_named(backbone_arch, str(weights_backbone), "weights_backbone")
            self.weights_report = load_fitting(self, w, backbone_arch, classifier, first_conv)
        if self.weights_report is not None:
            # detection transforms carry no statistics, and the network normalises by itself
            self.preprocessing = {}


def _check_coco_backbone(weights: str | None, backbone: str, expected: str, model: str) -> None:
    if not is_null(weights) and backbone != expected:
        raise ValueError(
            f"model.weights={weights!r}: torchvision's {model} weights are for model.backbone={expected}, "
            f"not {backbone}; set model.backbone={expected}, or model.weights=null with "
            "model.weights_backbone=DEFAULT for ImageNet weights in the backbone alone"
        )


def _resnet_fpn(backbone: str, in_channels: int, frozen_batch_norm: bool) -> tuple[nn.Module, tvm.ResNet]:
    """P3-P7 feature pyramid on a ResNet, as torchvision's RetinaNet and FCOS; with the ResNet it wraps."""
    norm_layer = FrozenBatchNorm2d if frozen_batch_norm else nn.BatchNorm2d
    resnet = getattr(tvm, backbone)(weights=None, norm_layer=norm_layer)
    replace_first_conv(resnet, "conv1", in_channels)
    # every layer trainable in torchvision's sense: cnnlab's finetune.freeze decides what trains
    body = _resnet_fpn_extractor(resnet, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return body, resnet


def _sizes(image_size: int, min_size: int | None, max_size: int | None) -> dict[str, int]:
    shortest = int(min_size or image_size)
    return {"min_size": shortest, "max_size": int(max_size or round(shortest * MAX_ASPECT))}


class RetinaNet(Detector):
    """RetinaNet (Lin et al., 2017): focal loss on a ResNet-18/34/50 feature pyramid, 9 anchors per place.

    ``anchor_sizes`` are the base sizes of the five pyramid levels (strides 8 to 128), each with two larger
    octave steps and aspect ratios 0.5, 1 and 2: the default (8 to 128 px) is torchvision's divided by four,
    for objects of 8-50 px in 64-128 px images.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet18",
        weights: str | None = None,
        weights_backbone: str | None = None,
        image_size: int = 128,
        min_size: int | None = None,
        max_size: int | None = None,
        anchor_sizes: Sequence[int] = (8, 16, 32, 64, 128),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        frozen_batch_norm: bool | None = None,
    ) -> None:
        check_choice("backbone", backbone, RESNETS, "RetinaNet backbone")
        _check_coco_backbone(weights, backbone, "resnet50", "RetinaNet")
        anchor_sizes = [int(s) for s in anchor_sizes]
        if len(anchor_sizes) != 5:
            raise ValueError(
                f"model.anchor_sizes={anchor_sizes}: give one base size per pyramid level P3-P7 (five), "
                "e.g. [8, 16, 32, 64, 128]"
            )
        pretrained = not (is_null(weights) and is_null(weights_backbone))
        frozen = pretrained if frozen_batch_norm is None else frozen_batch_norm
        body, resnet = _resnet_fpn(backbone, in_channels, frozen)
        octaves = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes)
        model = TorchvisionRetinaNet(
            body,
            num_classes + 1,
            image_mean=fit_channels(IMAGENET_MEAN, in_channels),
            image_std=fit_channels(IMAGENET_STD, in_channels),
            anchor_generator=AnchorGenerator(octaves, ((0.5, 1.0, 2.0),) * len(octaves)),
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            **_sizes(image_size, min_size, max_size),
        )
        super().__init__(model, resnet_stages(body.body))
        self._load(weights, weights_backbone, "retinanet_resnet50_fpn", backbone, resnet, resnet.conv1)
        if not is_null(weights) and frozen:
            overwrite_eps(model, 0.0)  # as torchvision's builder: its COCO weights were trained with eps 0


class FCOS(Detector):
    """FCOS (Tian et al., 2019): anchor-free, a box and a centre-ness per place of a ResNet-18/34/50 pyramid.

    Each pyramid level (strides 8 to 128) answers for objects of a size range (up to 64 px from a point to
    the box's sides for the first level), so objects of 8-50 px fall on the finest, stride-8 level.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet18",
        weights: str | None = None,
        weights_backbone: str | None = None,
        image_size: int = 128,
        min_size: int | None = None,
        max_size: int | None = None,
        score_thresh: float = 0.2,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        frozen_batch_norm: bool | None = None,
    ) -> None:
        check_choice("backbone", backbone, RESNETS, "FCOS backbone")
        _check_coco_backbone(weights, backbone, "resnet50", "FCOS")
        pretrained = not (is_null(weights) and is_null(weights_backbone))
        frozen = pretrained if frozen_batch_norm is None else frozen_batch_norm
        body, resnet = _resnet_fpn(backbone, in_channels, frozen)
        model = TorchvisionFCOS(
            body,
            num_classes + 1,
            image_mean=fit_channels(IMAGENET_MEAN, in_channels),
            image_std=fit_channels(IMAGENET_STD, in_channels),
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            **_sizes(image_size, min_size, max_size),
        )
        super().__init__(model, resnet_stages(body.body))
        self._load(weights, weights_backbone, "fcos_resnet50_fpn", backbone, resnet, resnet.conv1)


class SSDLite(Detector):
    """SSDLite (Sandler et al., 2018; Howard et al., 2019) on MobileNetV3: the lightest of the three.

    Images are resized to ``image_size`` squared (torchvision's builder fixes 320). The default boxes of the
    six feature maps grow from ``min_ratio`` to ``max_ratio`` of the image side: torchvision's 0.2-0.95 is
    lowered to 0.1-0.9 so that the first map's boxes fit 8-16 px objects in 64-128 px images.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "mobilenet_v3_large",
        weights: str | None = None,
        weights_backbone: str | None = None,
        image_size: int = 128,
        min_ratio: float = 0.1,
        max_ratio: float = 0.9,
        score_thresh: float = 0.001,
        nms_thresh: float = 0.55,
        detections_per_img: int = 100,
    ) -> None:
        check_choice("backbone", backbone, MOBILENETS, "SSDLite backbone")
        _check_coco_backbone(weights, backbone, "mobilenet_v3_large", "SSDLite")
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        # torchvision's choices: the reduced tail (Table 6 of the MobileNetV3 paper) unless ImageNet weights
        # fill the full one, and its own initialisation for a backbone that starts from scratch
        mobilenet = getattr(tvm, backbone)(
            weights=None, norm_layer=norm_layer, reduced_tail=is_null(weights_backbone)
        )
        if is_null(weights_backbone):
            ssdlite._normal_init(mobilenet)
        replace_first_conv(mobilenet, "features.0.0", in_channels)
        body = ssdlite._mobilenet_extractor(mobilenet, 6, norm_layer)
        anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=min_ratio, max_ratio=max_ratio)
        size = (image_size, image_size)
        head = ssdlite.SSDLiteHead(
            _out_channels(body, in_channels, size),
            anchors.num_anchors_per_location(),
            num_classes + 1,
            norm_layer,
        )
        model = SSD(
            body,
            anchors,
            size,
            num_classes + 1,
            image_mean=fit_channels([0.5, 0.5, 0.5], in_channels),  # torchvision's: [0, 1] to [-1, 1]
            image_std=fit_channels([0.5, 0.5, 0.5], in_channels),
            head=head,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=300,
        )
        blocks = [*body.features[0], *body.features[1]]
        super().__init__(model, split_by_resolution(blocks))
        self._load(
            weights,
            weights_backbone,
            "ssdlite320_mobilenet_v3_large",
            backbone,
            mobilenet,
            mobilenet.features[0][0],
        )


def _out_channels(body: nn.Module, in_channels: int, size: tuple[int, int]) -> list[int]:
    # torchvision's retrieve_out_channels feeds three channels; the first conv may take another number
    was_training = body.training
    body.eval()
    with torch.no_grad():
        features = body(torch.zeros(1, in_channels, size[1], size[0]))
    body.train(was_training)
    return [f.shape[1] for f in features.values()]
