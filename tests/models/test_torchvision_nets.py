"""torchvision's architectures in the ``Classifier`` contract: they train, own every parameter once, run
torchvision's own forward, and their model configs match their constructors."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision import models as tvm

import cnnlab.config  # noqa: F401  (registers the ${lt:...} resolver the model configs use)
from cnnlab import CONF_DIR
from cnnlab.models import torchvision_nets, weights
from cnnlab.models.base import Classifier


@dataclass(frozen=True)
class Case:
    """How to test one architecture: a small, fast variant, and the torchvision network it reproduces."""

    cls: type[Classifier]
    small: dict[str, Any]  # a variant for 16-32 px images
    size: int  # the input size of the small variant with 3 channels
    arch: str  # torchvision's builder
    torchvision_kwargs: dict[str, Any] = field(default_factory=dict)
    full: dict[str, Any] = field(default_factory=dict)  # the variant that is torchvision's network
    full_size: int = 64
    grey_size: int = 16  # the input size of the small variant with 1 channel, as the embedded digits


NO_AUX = {"aux_logits": False, "init_weights": True}  # how the Inception networks build torchvision's
CASES = {
    "ResNet": Case(torchvision_nets.ResNet, {"small_input": True}, 32, "resnet18"),
    "VGG": Case(
        torchvision_nets.VGG,
        small={"depth": 11, "small_input": True, "image_size": 32},
        size=32,
        arch="vgg11_bn",
        full={"depth": 11, "image_size": 32},
        full_size=32,
        grey_size=32,  # VGG's pooling follows image_size
    ),
    "AlexNet": Case(torchvision_nets.AlexNet, {"small_input": True}, 32, "alexnet"),
    "GoogLeNet": Case(torchvision_nets.GoogLeNet, {"small_input": True}, 32, "googlenet", NO_AUX),
    "InceptionV3": Case(
        torchvision_nets.InceptionV3,
        small={"image_size": 75},
        size=75,
        arch="inception_v3",
        torchvision_kwargs=NO_AUX,
        full={"image_size": 75},
        full_size=75,
        grey_size=75,
    ),
    "MobileNetV3": Case(
        torchvision_nets.MobileNetV3,
        small={"arch": "mobilenet_v3_small", "small_input": True},
        size=32,
        arch="mobilenet_v3_small",
        full={"arch": "mobilenet_v3_small"},
    ),
    "EfficientNet": Case(torchvision_nets.EfficientNet, {"small_input": True}, 32, "efficientnet_b0"),
    "ConvNeXt": Case(torchvision_nets.ConvNeXt, {"small_input": True}, 32, "convnext_tiny", full_size=32),
}
NUM_CLASSES = 5


@cache
def small_model(name: str, in_channels: int) -> Classifier:
    """One small model per architecture and channel count, shared by the tests that only read it."""
    torch.manual_seed(0)
    case = CASES[name]
    return case.cls(num_classes=NUM_CLASSES, in_channels=in_channels, **case.small)


@pytest.fixture(autouse=True, scope="module")
def free_the_small_models() -> Iterator[None]:
    """The cached models are freed when this module's tests are done."""
    yield
    small_model.cache_clear()


def test_every_architecture_has_a_case() -> None:
    classes = {
        name
        for name, obj in vars(torchvision_nets).items()
        if inspect.isclass(obj)
        and issubclass(obj, Classifier)
        and obj.__module__ == torchvision_nets.__name__
    }
    assert classes == set(CASES)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_backward(name: str, in_channels: int) -> None:
    model = small_model(name, in_channels).train()
    size = CASES[name].size if in_channels == 3 else CASES[name].grey_size
    logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, NUM_CLASSES)
    model.zero_grad()
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters()), "a parameter took no part in the forward"
    assert model.preprocessing is None and model.weights_report is None  # from scratch


@pytest.mark.parametrize("name", list(CASES))
def test_stages_and_head_hold_every_parameter_once(name: str) -> None:
    model = small_model(name, 3)
    owned = [id(p) for part in [*model.stages, model.head] for p in part.parameters()]
    assert len(owned) == len(set(owned)), "a parameter belongs to two stages"
    assert set(owned) == {id(p) for p in model.parameters()}, "a parameter is outside the stages and head"
    assert 4 <= len(model.stages) <= 6


@pytest.mark.parametrize("name", list(CASES))
def test_stages_go_from_fine_to_coarse(name: str) -> None:
    model, size = small_model(name, 3).eval(), CASES[name].size
    x, sides = torch.randn(1, 3, size, size), []
    with torch.no_grad():
        for stage in model.stages:
            x = stage(x)
            sides.append(x.shape[-1])
    assert sides == sorted(sides, reverse=True) and sides[-1] < size


# full-size networks: VGG's two copies (torchvision's and ours, 138 M parameters each) take 3.5 GB at once
FULL_SIZE = [pytest.param(name, marks=pytest.mark.slow) if name == "VGG" else name for name in CASES]


@pytest.mark.parametrize("name", FULL_SIZE)
def test_stages_then_head_is_torchvisions_forward(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    torch.manual_seed(0)
    reference = getattr(tvm, case.arch)(weights=None, **case.torchvision_kwargs).eval()
    # torchvision's tensors reach the model through the pretrained-weights path, as real weights would
    monkeypatch.setattr(weights, "read_hub_state_dict", lambda *_: reference.state_dict())
    model = case.cls(num_classes=1000, in_channels=3, weights="DEFAULT", **case.full).eval()
    last = [m for m in reference.modules() if isinstance(m, nn.Linear)][-1]
    model.head[-1].load_state_dict(last.state_dict())  # the new head's last layer is the only new tensor
    x = torch.randn(2, 3, case.full_size, case.full_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)
    # every other tensor of torchvision's network found its place in the stages or the head
    last_name = next(n for n, m in reference.named_modules() if m is last)
    assert set(model.weights_report.left_out) == {f"{last_name}.weight", f"{last_name}.bias"}


@pytest.mark.parametrize(("name", "arch"), [("VGG", "vgg11_bn"), ("AlexNet", "alexnet")])
def test_small_input_features_start_as_torchvisions_do(name: str, arch: str) -> None:
    # the classifier a small input never uses is not built; the features it keeps are initialised as
    # torchvision initialises them, batch norm's running statistics included
    model = CASES[name].cls(num_classes=NUM_CLASSES, in_channels=3, **CASES[name].small)  # untrained
    reference = getattr(tvm, arch)(weights=None)
    layers = (nn.Conv2d, nn.BatchNorm2d)
    ours = [m for stage in model.stages for m in stage.modules() if isinstance(m, layers)]
    theirs = [m for m in reference.features.modules() if isinstance(m, layers)]
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    for mine, torchvisions in list(zip(ours, theirs, strict=True))[1:]:  # the first takes other inputs
        assert not any(t.is_meta for t in [*mine.parameters(), *mine.buffers()])
        if isinstance(mine, nn.Conv2d):
            assert mine.weight.std().item() == pytest.approx(torchvisions.weight.std().item(), rel=0.1)
            assert mine.weight.abs().max() <= 1.5 * torchvisions.weight.abs().max()  # uniform stays uniform
            assert bool((mine.bias == 0).all()) == bool((torchvisions.bias == 0).all())
        else:
            for key, value in torchvisions.state_dict().items():
                torch.testing.assert_close(mine.state_dict()[key], value)


def test_inception_v3_refuses_small_images() -> None:
    with pytest.raises(ValueError, match=r"at least 75 px.*data.image_size=64"):
        torchvision_nets.InceptionV3(num_classes=2, image_size=64)
    model = small_model("InceptionV3", 3)
    with pytest.raises(ValueError, match="at least 75 px, got 64x64"):
        model(torch.randn(1, 3, 64, 64))


def test_unknown_arch_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="efficientnet_b0, efficientnet_b1"):
        torchvision_nets.EfficientNet(num_classes=2, arch="efficientnet_b9")


@pytest.mark.parametrize(
    ("cls", "arch", "stages"),
    [
        (torchvision_nets.MobileNetV3, "mobilenet_v3_large", 6),
        (torchvision_nets.EfficientNet, "efficientnet_b1", 6),
        (torchvision_nets.EfficientNet, "efficientnet_b3", 6),
        (torchvision_nets.ResNet, "resnet50", 5),
    ],
)
def test_variants_build_with_stages(cls: type[Classifier], arch: str, stages: int) -> None:
    assert len(cls(num_classes=2, arch=arch).stages) == stages


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_every_architecture_scripts_for_export(name: str) -> None:
    model, size = small_model(name, 3).eval(), CASES[name].size
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


MODEL_CONFIGS = sorted(
    path
    for path in (CONF_DIR / "model").glob("*.yaml")
    if OmegaConf.load(path).get("_target_", "").startswith(torchvision_nets.__name__)
)


def test_every_architecture_has_a_config() -> None:
    targets = {OmegaConf.load(path)["_target_"].rsplit(".", 1)[1] for path in MODEL_CONFIGS}
    assert targets == set(CASES)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_config_keys_are_constructor_arguments(path: Path) -> None:
    data = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    cfg = OmegaConf.merge({"data": data}, {"model": OmegaConf.load(path)})
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    cls = CASES[model_cfg.pop("_target_").rsplit(".", 1)[1]].cls
    params = inspect.signature(cls).parameters
    assert set(model_cfg) <= set(params), f"{path.name} sets keys {cls.__name__} does not take"
    assert model_cfg["weights"] is None and model_cfg["num_classes"] == 10 and model_cfg["in_channels"] == 1
    if "small_input" in model_cfg:
        assert model_cfg["small_input"] is True
