"""torchvision's segmenters in the ``StagedNet`` contract: logits at the input's size, torchvision's own
network and weights (read from an offline torch hub cache), stages that freeze the real backbone, and model
configs that build them."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision import models as tvm

from cnnlab import CONF_DIR
from cnnlab.finetune import StageFreezer, parameter_groups
from cnnlab.models import segmenters
from cnnlab.models.base import OUTPUTS
from cnnlab.models.segmenters import FCN, LRASPP, DeepLabV3, Segmenter
from cnnlab.models.torchvision_nets import MobileNetV3
from cnnlab.models.weights import WeightsNotFoundError

from .hub import place_in_hub_cache

K = 3
#: every architecture, with its class (the ResNet-101 variants differ from the ResNet-50 ones in depth only)
ARCHS = {
    "fcn_resnet50": FCN,
    "deeplabv3_resnet50": DeepLabV3,
    "deeplabv3_mobilenet_v3_large": DeepLabV3,
    "lraspp_mobilenet_v3_large": LRASPP,
}
LIGHT = ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


def build(arch: str, **kwargs: Any) -> Segmenter:
    torch.manual_seed(0)
    return ARCHS[arch](num_classes=kwargs.pop("num_classes", K), arch=arch, **kwargs)


# --- the network --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_have_the_input_size_also_odd(arch: str) -> None:
    model = build(arch).train()
    logits = model(torch.randn(2, 3, 33, 47))
    assert logits.shape == (2, K, 33, 47)
    assert model.output == "pixel_scores" and model.output in OUTPUTS
    assert model.preprocessing is None and model.weights_report is None  # from scratch


@pytest.mark.parametrize("arch", ["fcn_resnet50", "lraspp_mobilenet_v3_large"])
def test_grey_images(arch: str) -> None:
    model = build(arch, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 40, 40)).shape == (1, K, 40, 40)


@pytest.mark.parametrize(
    ("arch", "aux_loss"),
    [(arch, aux) for arch in ARCHS for aux in (False, True) if not (aux and arch.startswith("lraspp"))],
)
def test_network_is_torchvisions(arch: str, aux_loss: bool) -> None:
    model = build(arch, aux_loss=aux_loss).eval()
    builder = tvm.get_model_builder(arch)
    reference = builder(weights=None, weights_backbone=None, num_classes=K, aux_loss=aux_loss or None).eval()
    # every tensor once, under torchvision's own name: the stages are not registered a second time
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        f"model.{k}": v.shape for k, v in reference.state_dict().items()
    }
    model.model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected["out"])
        assert set(model.forward_dict(x)) == set(expected) == ({"out", "aux"} if aux_loss else {"out"})


def test_lraspp_refuses_an_auxiliary_head() -> None:
    with pytest.raises(ValueError, match=r"aux_loss=true: LR-ASPP has no auxiliary head.*model=deeplabv3"):
        LRASPP(num_classes=2, aux_loss=True)


def test_unknown_arch_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"model.arch='fcn_mobilenet_v3_large'.*fcn_resnet50, fcn_resnet101"):
        FCN(num_classes=2, arch="fcn_mobilenet_v3_large")


# --- stages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "count"), [("fcn_resnet50", 5), ("deeplabv3_resnet50", 5), *[(a, 6) for a in LIGHT]]
)
def test_stages_are_the_backbones_own_modules(arch: str, count: int) -> None:
    model = build(arch)
    stages = model.stages
    assert len(stages) == count
    owned = [id(p) for stage in stages for p in stage.parameters()]
    assert len(owned) == len(set(owned)), "a parameter belongs to two stages"
    assert set(owned) == {id(p) for p in model.model.backbone.parameters()}
    with torch.no_grad():
        outputs = model.eval().forward_stages(torch.randn(1, 3, 64, 64))
    sides = [o.shape[-1] for o in outputs]
    assert len(outputs) == count and sides == sorted(sides, reverse=True) and sides[-1] < 64


def test_mobilenet_stages_are_the_classifiers_despite_dilation() -> None:
    # the segmenters' MobileNetV3 stays at 1/16 in its last stage; freeze=k still means the same blocks
    classifier = MobileNetV3(num_classes=2, arch="mobilenet_v3_large")
    model = build("lraspp_mobilenet_v3_large")
    counts = [[p.numel() for p in stage.parameters()] for stage in model.stages]
    assert counts == [[p.numel() for p in stage.parameters()] for stage in classifier.stages]


@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "lraspp_mobilenet_v3_large"])
def test_frozen_stages_get_no_gradient_and_keep_their_statistics(arch: str) -> None:
    model = build(arch)
    freezer = StageFreezer(model, {"freeze": 2})
    model.train()
    freezer.hold(epoch=0)
    stem_bn = next(m for m in model.stages[0].modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = stem_bn.running_mean.clone()
    model(torch.randn(2, 3, 48, 48)).logsumexp(1).mean().backward()
    for stage in model.stages[:2]:
        assert all(not p.requires_grad and p.grad is None for p in stage.parameters())
    for stage in model.stages[2:]:
        assert all(p.grad is not None for p in stage.parameters())
    assert all(p.grad is not None for p in model.model.classifier.parameters())
    torch.testing.assert_close(stem_bn.running_mean, before)


@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "lraspp_mobilenet_v3_large"])
def test_each_parameter_in_one_optimiser_group(arch: str) -> None:
    model = build(arch)
    groups = parameter_groups(model, 0.1, {"layer_decay": 0.5})
    assert [g["name"] for g in groups] == [f"stage{i}" for i in range(len(model.stages))] + ["head"]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    torch.optim.SGD(groups, lr=0.1)  # refuses a parameter in two groups


# --- weights ------------------------------------------------------------------------------------------------


def test_segmentation_weights_load_and_leave_out_the_classifier(caplog: pytest.LogCaptureFixture) -> None:
    arch = "deeplabv3_mobilenet_v3_large"
    saved = place_in_hub_cache(arch, "COCO_WITH_VOC_LABELS_V1", aux_loss=True)  # as torchvision's file
    with caplog.at_level(logging.INFO, logger=segmenters.__name__):
        model = build(arch, weights="DEFAULT")
    ours = model.state_dict()
    new = {"classifier.4.weight", "classifier.4.bias"}  # the last conv, sized for 21 classes
    for key, tensor in saved.items():
        if key not in new and not key.startswith("aux_classifier."):
            torch.testing.assert_close(ours[f"model.{key}"], tensor, msg=key)
    left_out = model.weights_report.left_out
    assert {k for k, why in left_out.items() if why == "sized for another number of classes"} == new
    assert {k for k in left_out if k not in new} == {k for k in saved if k.startswith("aux_classifier.")}
    assert len(model.weights_report.loaded) == len(ours) - 2
    assert "left out 2 tensors (sized for another number of classes): classifier.4" in caplog.text
    assert model.preprocessing == {
        "mean": pytest.approx([0.485, 0.456, 0.406]),
        "std": pytest.approx([0.229, 0.224, 0.225]),
        "resize_size": 520,
    }


def test_segmentation_weights_for_21_classes_are_torchvisions_network() -> None:
    arch = "lraspp_mobilenet_v3_large"
    saved = place_in_hub_cache(arch, "COCO_WITH_VOC_LABELS_V1")
    model = build(arch, num_classes=21, weights="COCO_WITH_VOC_LABELS_V1").eval()
    reference = tvm.get_model_builder(arch)(weights=None, weights_backbone=None).eval()
    reference.load_state_dict(saved)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x)["out"])
    assert model.weights_report.left_out == {}


def test_grey_network_sums_the_pretrained_first_filters() -> None:
    arch = "lraspp_mobilenet_v3_large"
    saved = place_in_hub_cache(arch, "DEFAULT")
    model = build(arch, in_channels=1, weights="DEFAULT")
    first = "model.backbone.0.0.weight"
    assert model.weights_report.adapted == [first]
    torch.testing.assert_close(model.state_dict()[first], saved["backbone.0.0.weight"].sum(1, keepdim=True))
    assert model.preprocessing["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])


def test_backbone_weights_fill_the_backbone_alone() -> None:
    saved = place_in_hub_cache("mobilenet_v3_large", "IMAGENET1K_V2")
    model = build("deeplabv3_mobilenet_v3_large", weights_backbone="DEFAULT")
    ours = model.state_dict()
    features = {k for k in saved if k.startswith("features.")}
    for key in features:
        torch.testing.assert_close(ours["model.backbone." + key.removeprefix("features.")], saved[key])
    assert set(model.weights_report.left_out) == set(saved) - features  # the ImageNet classifier
    assert all(k.startswith("model.backbone.") for k in model.weights_report.loaded)
    # the ImageNet statistics, not the classifier's crop
    assert set(model.preprocessing) == {"mean", "std"}


@pytest.mark.slow
def test_fcn_weights_and_resnet_backbone_weights() -> None:
    saved = place_in_hub_cache("fcn_resnet50", "DEFAULT", aux_loss=True)
    model = build("fcn_resnet50", aux_loss=True, weights="DEFAULT")
    left = model.weights_report.left_out
    assert set(left) == {f"{h}.4.{t}" for h in ("classifier", "aux_classifier") for t in ("weight", "bias")}
    torch.testing.assert_close(model.stages[1][0].conv1.weight, saved["backbone.layer1.0.conv1.weight"])
    saved = place_in_hub_cache("resnet50", "IMAGENET1K_V2")
    model = build("fcn_resnet50", weights_backbone="IMAGENET1K_V2")
    assert set(model.weights_report.left_out) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(model.stages[4][2].conv3.weight, saved["layer4.2.conv3.weight"])


def test_offline_without_the_file_names_the_file_and_folder(tmp_path: Path, offline: list[str]) -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        build("deeplabv3_mobilenet_v3_large", weights="DEFAULT")
    message = str(caught.value)
    assert "deeplabv3_mobilenet_v3_large-fc3c493d.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "model.weights=null" in message
    with pytest.raises(WeightsNotFoundError, match=r"mobilenet_v3_large-5c1a4163\.pth"):
        build("lraspp_mobilenet_v3_large", weights_backbone="DEFAULT")
    assert len(offline) == 2  # one try each, then a clear error


def test_wrong_weights_names_say_the_key_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"model.weights_backbone='COCO_WITH_VOC_LABELS_V1'.*IMAGENET1K_V1"):
        build("lraspp_mobilenet_v3_large", weights_backbone="COCO_WITH_VOC_LABELS_V1")
    with pytest.raises(ValueError, match=r"model.weights='IMAGENET1K_V1'.*COCO_WITH_VOC_LABELS_V1, DEFAULT"):
        build("lraspp_mobilenet_v3_large", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match=r"both set.*model.weights_backbone=null"):
        build("lraspp_mobilenet_v3_large", weights="DEFAULT", weights_backbone="DEFAULT")


# --- export and configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", LIGHT)
def test_scripts_for_export(arch: str) -> None:
    model = build(arch, in_channels=1).eval()
    x = torch.randn(1, 1, 35, 29)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


MODEL_CONFIGS = ["fcn", "deeplabv3", "lraspp"]


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_config_keys_are_constructor_arguments(name: str) -> None:
    data = {"num_classes": 4, "in_channels": 1, "image_size": 64}
    cfg = OmegaConf.merge({"data": data}, {"model": OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")})
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    cls = getattr(segmenters, model_cfg.pop("_target_").removeprefix("cnnlab.models.segmenters."))
    assert set(model_cfg) <= set(inspect.signature(cls).parameters), (
        f"{name}.yaml sets keys {cls} does not take"
    )
    assert model_cfg["weights"] is None and model_cfg["weights_backbone"] is None
    assert model_cfg["num_classes"] == 4 and model_cfg["in_channels"] == 1
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 30, 30)).shape == (1, 4, 30, 30)
