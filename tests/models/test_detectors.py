"""torchvision's one-stage detectors in the ``StagedNet`` contract: torchvision's losses and detections with
cnnlab's 0-based labels, images of any size in their own pixels, torchvision's weights from an offline torch
hub cache, stages that freeze the real backbone, TorchScript for export, and model configs that build them."""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor
from torchvision import models as tvm
from torchvision.ops.misc import FrozenBatchNorm2d

from cnnlab import CONF_DIR
from cnnlab.finetune import StageFreezer, parameter_groups
from cnnlab.models import detectors
from cnnlab.models.base import OUTPUTS
from cnnlab.models.detectors import FCOS, Detector, RetinaNet, SSDLite
from cnnlab.models.weights import WeightsNotFoundError

from .hub import place_in_hub_cache

K = 3
CLASSES = {"RetinaNet": RetinaNet, "FCOS": FCOS, "SSDLite": SSDLite}
#: FCOS is the detector tests/tasks/test_detection.py trains (its losses fall) and exports in every format
#: (each gives the checkpoint's boxes): its own few-steps and TorchScript tests run in make test-all
TRAINED_BY_THE_TASK_TESTS = [
    pytest.param(name, marks=pytest.mark.slow) if name == "FCOS" else name for name in CLASSES
]
LOSSES = {
    "RetinaNet": {"classification", "bbox_regression"},
    "FCOS": {"classification", "bbox_regression", "bbox_ctrness"},
    "SSDLite": {"classification", "bbox_regression"},
}


def build(name: str, **kwargs: Any) -> Detector:
    torch.manual_seed(0)
    return CLASSES[name](
        num_classes=kwargs.pop("num_classes", K), image_size=kwargs.pop("image_size", 64), **kwargs
    )


def images(channels: int = 3) -> list[Tensor]:
    """Two images of different sizes, in [0, 1]."""
    torch.manual_seed(2)
    return [torch.rand(channels, 64, 80), torch.rand(channels, 72, 56)]


def targets() -> list[dict[str, Tensor]]:
    """Two objects of 0-based classes 0 and 2 in the first image, none in the second."""
    return [
        {
            "boxes": torch.tensor([[6.0, 8.0, 22.0, 30.0], [40.0, 20.0, 76.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


# --- training and detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLASSES))
def test_training_returns_torchvisions_losses(name: str) -> None:
    model = build(name).train()
    losses = model(images(), targets())
    assert set(losses) == LOSSES[name]
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.output == "detections" and model.output in OUTPUTS
    assert model.preprocessing is None and model.weights_report is None  # from scratch


@pytest.mark.parametrize("name", list(CLASSES))
def test_detections_lie_in_each_image_with_0_based_labels(name: str) -> None:
    model = build(name, score_thresh=0.0).eval()  # every candidate, so that there is something to check
    batch = images() + [torch.rand(3, 96, 160)]  # larger than image_size: resized inside, mapped back
    with torch.no_grad():
        found = model(batch)
    assert len(found) == len(batch)
    for image, dets in zip(batch, found, strict=True):
        boxes, scores, labels = dets["boxes"], dets["scores"], dets["labels"]
        assert len(boxes) > 0 and boxes.shape == (len(scores), 4) and labels.shape == scores.shape
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        height, width = image.shape[1:]
        assert (boxes >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, :2] <= boxes[:, 2:]).all()
        assert ((labels >= 0) & (labels < K)).all() and ((scores >= 0) & (scores <= 1)).all()
    # the widest image's boxes reach past the 107 px it was resized to: they are in its own pixels
    assert found[-1]["boxes"][:, 2].max() > 110


def test_labels_go_in_shifted_by_one_and_come_back_without_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = build("RetinaNet")
    seen: list[list[dict[str, Tensor]]] = []

    def torchvision_forward(imgs: list[Tensor], tgts: list[dict[str, Tensor]] | None = None) -> Any:
        seen.append(tgts)
        if model.model.training:
            return {"classification": torch.tensor(1.0)}
        # torchvision's labels: 0 is the background, which RetinaNet and FCOS score like any class
        return [
            {
                "boxes": torch.ones(3, 4),
                "scores": torch.tensor([0.9, 0.8, 0.7]),
                "labels": torch.tensor([3, 0, 1]),
            }
        ]

    monkeypatch.setattr(model.model, "forward", torchvision_forward)
    model.train()(images()[:1], targets()[:1])
    assert seen[0][0]["labels"].tolist() == [1, 3]
    assert torch.equal(seen[0][0]["boxes"], targets()[0]["boxes"])
    found = model.eval()(images()[:1])
    assert found[0]["labels"].tolist() == [2, 0] and found[0]["scores"].tolist() == pytest.approx([0.9, 0.7])


@pytest.mark.parametrize("name", list(CLASSES))
def test_grey_images(name: str) -> None:
    model = build(name, in_channels=1)
    assert set(model.train()(images(1), targets())) == LOSSES[name]
    with torch.no_grad():
        assert len(model.eval()(images(1))) == 2


def test_training_without_targets_says_what_it_needs() -> None:
    with pytest.raises(ValueError, match=r"training mode needs targets.*boxes.*labels.*\.eval\(\)"):
        build("SSDLite").train()(images())


@pytest.mark.parametrize("name", TRAINED_BY_THE_TASK_TESTS)
def test_a_few_steps_lower_the_loss(name: str) -> None:
    model = build(name).train()
    # a small rate: from scratch, with batch norm on two images, Adam at 1e-3 spikes RetinaNet's focal loss
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch, tgts = images(), targets()
    totals = []
    for _ in range(6):
        loss = sum(model(batch, tgts).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        totals.append(loss.item())
    assert totals[-1] < 0.85 * totals[0], totals


def test_resizing_follows_image_size() -> None:
    transform = build("RetinaNet", image_size=96).model.transform
    assert (transform.min_size, transform.max_size) == ((96,), round(96 * 1333 / 800))
    transform = build("FCOS", image_size=96, min_size=80, max_size=100).model.transform
    assert (transform.min_size, transform.max_size) == ((80,), 100)
    assert build("SSDLite", image_size=96).model.transform.fixed_size == (96, 96)


def test_retinanet_anchors_fit_small_objects() -> None:
    model = build("RetinaNet", anchor_sizes=[4, 8, 16, 32, 64])
    assert model.model.anchor_generator.sizes[0] == (4, 5, 6)
    assert build("RetinaNet").model.anchor_generator.sizes[0] == (8, 10, 12)
    with pytest.raises(ValueError, match=r"anchor_sizes=\[8, 16\].*one base size per pyramid level P3-P7"):
        build("RetinaNet", anchor_sizes=[8, 16])


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"model.backbone='resnet101'.*resnet18, resnet34, resnet50"):
        build("FCOS", backbone="resnet101")
    with pytest.raises(
        ValueError, match=r"model.backbone='resnet18'.*mobilenet_v3_large, mobilenet_v3_small"
    ):
        build("SSDLite", backbone="resnet18")


# --- stages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "count"),
    [
        ("RetinaNet", {}, 5),
        ("FCOS", {"backbone": "resnet34"}, 5),
        ("SSDLite", {}, 6),
        ("SSDLite", {"backbone": "mobilenet_v3_small"}, 5),
    ],
)
def test_stages_are_the_backbones_own_modules(name: str, kwargs: dict[str, Any], count: int) -> None:
    model = build(name, **kwargs)
    stages = model.stages
    owned = [id(p) for stage in stages for p in stage.parameters()]
    assert len(stages) == count and len(owned) == len(set(owned)), "a parameter belongs to two stages"
    backbone = model.model.backbone
    body = backbone.body if name != "SSDLite" else backbone.features
    assert set(owned) == {id(p) for p in body.parameters()}
    # every tensor once: the stages are not registered a second time
    assert len(model.state_dict()) == len(model.model.state_dict())
    with torch.no_grad():
        outputs = model.eval().forward_stages(torch.rand(1, 3, 64, 64))
    sides = [o.shape[-1] for o in outputs]
    assert len(outputs) == count and sides == sorted(sides, reverse=True) and sides[-1] < 64


@pytest.mark.parametrize("name", list(CLASSES))
def test_frozen_stages_get_no_gradient(name: str) -> None:
    model = build(name)
    freezer = StageFreezer(model, {"freeze": 2})
    model.train()
    freezer.hold(epoch=0)
    sum(model(images(), targets()).values()).backward()
    for stage in model.stages[:2]:
        assert all(not p.requires_grad and p.grad is None for p in stage.parameters())
        assert not any(m.training for m in stage.modules())
    for stage in model.stages[2:]:
        assert any(p.grad is not None for p in stage.parameters())
    assert all(p.grad is not None for p in model.model.head.parameters())


@pytest.mark.parametrize("name", list(CLASSES))
def test_each_parameter_in_one_optimiser_group(name: str) -> None:
    model = build(name)
    groups = parameter_groups(model, 0.1, {"layer_decay": 0.5})
    assert [g["name"] for g in groups] == [f"stage{i}" for i in range(len(model.stages))] + ["head"]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    torch.optim.SGD(groups, lr=0.1)  # refuses a parameter in two groups


# --- weights ------------------------------------------------------------------------------------------------


def test_coco_weights_load_and_leave_out_the_class_head() -> None:
    saved = place_in_hub_cache("ssdlite320_mobilenet_v3_large", "COCO_V1")
    model = build("SSDLite", weights="DEFAULT")
    report, ours = model.weights_report, model.state_dict()
    # the last conv of each of the six maps' classifiers, sized for 91 labels
    new = {
        k for k in saved if re.fullmatch(r"head\.classification_head\.module_list\.\d\.1\.(weight|bias)", k)
    }
    assert {k for k, why in report.left_out.items() if why == "sized for another number of classes"} == new
    assert set(report.left_out) == new and len(new) == 12
    for key, tensor in saved.items():
        if key not in new:
            torch.testing.assert_close(ours[f"model.{key}"], tensor, msg=key)
    assert model.preprocessing == {}  # the network normalises by itself: the data stays in [0, 1]


def test_coco_weights_with_90_classes_are_torchvisions_detector() -> None:
    arch = "ssdlite320_mobilenet_v3_large"
    saved = place_in_hub_cache(arch, "COCO_V1")
    # torchvision's own geometry: 320 px and its box ratios
    model = build("SSDLite", num_classes=90, weights="COCO_V1", image_size=320, min_ratio=0.2, max_ratio=0.95)
    reference = tvm.get_model_builder(arch)(
        weights=None, weights_backbone=None, detections_per_img=100
    ).eval()
    reference.load_state_dict(saved)
    assert model.weights_report.left_out == {}
    batch = images()
    with torch.no_grad():
        found, expected = model.eval()(batch), reference(batch)
    for ours, theirs in zip(found, expected, strict=True):
        torch.testing.assert_close(ours["boxes"], theirs["boxes"])
        torch.testing.assert_close(ours["scores"], theirs["scores"])
        assert torch.equal(ours["labels"], theirs["labels"] - 1)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_backbone_weights_fill_the_backbone_alone(in_channels: int) -> None:
    saved = place_in_hub_cache("resnet18", "IMAGENET1K_V1")
    model = build("RetinaNet", in_channels=in_channels, weights_backbone="DEFAULT")
    body = model.model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # as torchvision's, with pretrained weights
    torch.testing.assert_close(body.layer3[1].conv2.weight, saved["layer3.1.conv2.weight"])
    torch.testing.assert_close(body.layer1[0].bn1.running_var, saved["layer1.0.bn1.running_var"])
    first = saved["conv1.weight"] if in_channels == 3 else saved["conv1.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(body.conv1.weight, first)
    left_out = model.weights_report.left_out
    assert {k for k, why in left_out.items() if why == "not in this network"} == {"fc.weight", "fc.bias"}
    assert model.preprocessing == {}
    assert model.model.transform.image_mean == pytest.approx(
        [0.485, 0.456, 0.406][:in_channels] if in_channels == 3 else [0.449]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "arch"), [("RetinaNet", "retinanet_resnet50_fpn"), ("FCOS", "fcos_resnet50_fpn")]
)
def test_resnet50_coco_weights(name: str, arch: str) -> None:
    saved = place_in_hub_cache(arch, "COCO_V1")
    model = build(name, backbone="resnet50", weights="COCO_V1")
    left_out = model.weights_report.left_out
    assert {k for k, why in left_out.items() if why == "sized for another number of classes"} == {
        "head.classification_head.cls_logits.weight",
        "head.classification_head.cls_logits.bias",
    }
    torch.testing.assert_close(model.stages[3][0].conv2.weight, saved["backbone.body.layer3.0.conv2.weight"])
    eps = {m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)}
    assert eps == ({0.0} if name == "RetinaNet" else {1e-5})  # torchvision's RetinaNet weights used eps 0


def test_coco_weights_need_their_backbone() -> None:
    with pytest.raises(
        ValueError, match=r"weights are for model.backbone=resnet50, not resnet18.*weights_backbone"
    ):
        build("RetinaNet", weights="COCO_V1")
    with pytest.raises(ValueError, match=r"for model.backbone=mobilenet_v3_large, not mobilenet_v3_small"):
        build("SSDLite", backbone="mobilenet_v3_small", weights="COCO_V1")


def test_offline_without_the_file_names_the_file_and_folder(tmp_path: Path, offline: list[str]) -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        build("SSDLite", weights="DEFAULT")
    message = str(caught.value)
    assert "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "model.weights=null" in message
    with pytest.raises(WeightsNotFoundError, match=r"resnet18-f37072fd\.pth"):
        build("FCOS", weights_backbone="IMAGENET1K_V1")
    assert len(offline) == 2  # one try each, then a clear error


def test_wrong_weights_names_say_the_key_and_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"model.weights_backbone='COCO_V1'.*resnet18.*IMAGENET1K_V1, DEFAULT"
    ):
        build("RetinaNet", weights_backbone="COCO_V1")
    with pytest.raises(ValueError, match=r"both set"):
        build("SSDLite", weights="DEFAULT", weights_backbone="DEFAULT")


# --- export and configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRAINED_BY_THE_TASK_TESTS)
def test_scripted_detector_matches_eager(name: str) -> None:
    model = build(name, score_thresh=0.0).eval()
    scripted = torch.jit.script(model)
    batch = images()
    with torch.no_grad():
        eager, by_detect, by_forward = model(batch), scripted.detect(batch), scripted(batch)
    for ours, a, b in zip(eager, by_detect, by_forward, strict=True):
        assert len(ours["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[key], ours[key])
            torch.testing.assert_close(b[key], ours[key])


@pytest.mark.parametrize("name", ["retinanet", "fcos", "ssdlite"])
def test_config_keys_are_constructor_arguments(name: str) -> None:
    data = {"num_classes": 4, "in_channels": 1, "image_size": 64}
    cfg = OmegaConf.merge({"data": data}, {"model": OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")})
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    cls = getattr(detectors, model_cfg.pop("_target_").removeprefix("cnnlab.models.detectors."))
    assert set(model_cfg) <= set(inspect.signature(cls).parameters), (
        f"{name}.yaml sets keys {cls} does not take"
    )
    assert model_cfg["weights"] is None and model_cfg["weights_backbone"] is None
    assert (model_cfg["num_classes"], model_cfg["in_channels"], model_cfg["image_size"]) == (4, 1, 64)
    model = instantiate(cfg.model).eval()  # lists arrive as ListConfig, as in a run
    with torch.no_grad():
        found = model([torch.rand(1, 64, 64)])
    assert set(found[0]) == {"boxes", "scores", "labels"} and not math.isnan(found[0]["scores"].sum().item())
