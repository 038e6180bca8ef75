"""Pretrained weights: torchvision's from the torch hub cache (never the network), transfer from a cnnlab
checkpoint, and the errors a user meets with a wrong name, a wrong path or no internet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision import models as tvm

from cnnlab.errors import CheckpointError
from cnnlab.models import weights
from cnnlab.models.torchvision_nets import GoogLeNet, MobileNetV3, ResNet
from cnnlab.models.weights import WeightsNotFoundError, hub_file, torchvision_weights


def place_in_hub_cache(arch: str, name: str, **builder_kwargs: Any) -> tvm.WeightsEnum:
    """Write a torchvision network's state dict where torch hub keeps the weights ``name`` of ``arch``."""
    w = torchvision_weights(arch, name)
    hub_file(w).parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    torch.save(getattr(tvm, arch)(weights=None, **builder_kwargs).state_dict(), hub_file(w))
    return w


def reference(arch: str, w: tvm.WeightsEnum, **builder_kwargs: Any) -> torch.nn.Module:
    """torchvision's own network with the weights from the hub cache."""
    net = getattr(tvm, arch)(weights=None, **builder_kwargs)
    net.load_state_dict(torch.load(hub_file(w), weights_only=True))
    return net.eval()


def test_offline_without_the_file_names_the_file_and_folder(tmp_path: Path, offline: list[str]) -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        ResNet(num_classes=2, weights="DEFAULT")
    message, folder = str(caught.value), tmp_path / "hub" / "checkpoints"
    assert "resnet18-f37072fd.pth" in message and str(folder) in message
    assert (
        "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
        and "model.weights=null" in message
    )
    assert isinstance(caught.value, FileNotFoundError)
    # one try, then a clear error
    assert offline == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


@pytest.mark.parametrize("in_channels", [3, 1])
def test_weights_in_the_hub_cache_load_offline(in_channels: int, offline: list[str]) -> None:
    w = place_in_hub_cache("resnet18", "IMAGENET1K_V1")
    model = ResNet(num_classes=1000, in_channels=in_channels, weights="IMAGENET1K_V1").eval()
    net = reference("resnet18", w)
    model.head[-1].load_state_dict(net.fc.state_dict())
    x = torch.rand(2, in_channels, 64, 64)
    with torch.no_grad():
        # a grey image through the summed RGB filters answers as the same image in RGB through the originals
        torch.testing.assert_close(model(x), net(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)
    transforms = w.transforms()
    mean, std = transforms.mean, transforms.std
    if in_channels == 1:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    prep = model.preprocessing
    assert prep["mean"] == pytest.approx(mean) and prep["std"] == pytest.approx(std)
    assert (prep["image_size"], prep["resize_size"]) == (224, 256) and len(prep) == 4
    assert offline == []
    assert model.weights_report.adapted == ([] if in_channels == 3 else ["stages.0.0.weight"])


def test_googlenet_weights_drop_aux_classifiers_and_ask_for_minus_one_to_one(offline: list[str]) -> None:
    # torchvision's file holds the auxiliary classifiers too; the network has none
    w = place_in_hub_cache("googlenet", "DEFAULT", aux_logits=True, init_weights=True)
    model = GoogLeNet(num_classes=3, weights="DEFAULT")
    reasons = model.weights_report.left_out
    assert {reasons[k] for k in reasons if k.startswith(("aux1.", "aux2.", "fc."))} == {"not in this network"}
    assert all(k.startswith(("aux1.", "aux2.", "fc.")) for k in reasons)
    assert model.preprocessing == {"mean": [0.5] * 3, "std": [0.5] * 3, "image_size": 224, "resize_size": 256}
    assert w.name == "IMAGENET1K_V1" and offline == []


def test_a_download_fills_the_hub_cache(monkeypatch: pytest.MonkeyPatch, offline: list[str]) -> None:
    arch, net = "mobilenet_v3_small", tvm.mobilenet_v3_small(weights=None)

    def download(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        torch.save(net.state_dict(), dst)  # what torch hub's download writes

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    model = MobileNetV3(num_classes=2, arch=arch, weights="DEFAULT")
    assert hub_file(torchvision_weights(arch, "DEFAULT")).is_file()
    torch.testing.assert_close(model.stages[1][0].block[0][0].weight, net.features[1].block[0][0].weight)


def test_pretrained_network_scripts_for_export(offline: list[str]) -> None:
    # export writes TorchScript: the attributes the weights add (preprocessing, report) must not hinder it
    place_in_hub_cache("mobilenet_v3_small", "DEFAULT")
    model = MobileNetV3(num_classes=2, in_channels=1, arch="mobilenet_v3_small", weights="DEFAULT").eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def write_checkpoint(path: Path, model: torch.nn.Module, contract: dict[str, Any]) -> Path:
    """A checkpoint in cnnlab's layout: Lightning's, the network under ``net.``, the data contract beside."""
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}
            | {"loss.weight": torch.ones(3)},
            "hyper_parameters": {
                "run_config": {"model": {"_target_": "cnnlab.models.torchvision_nets.ResNet"}}
            },
            "cnnlab": {"contract": contract, "task": "classification"},
        },
        path,
    )
    return path


CONTRACT = {
    "task": "classification",
    "class_names": ["a", "b", "c"],
    "in_channels": 3,
    "image_size": 32,
    "resize_size": 36,
    "mean": [0.4, 0.5, 0.6],
    "std": [0.2, 0.2, 0.3],
}


def test_checkpoint_transfers_the_stages_never_the_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = ResNet(num_classes=3, small_input=True)
    path = write_checkpoint(tmp_path / "best.ckpt", source, CONTRACT)
    with caplog.at_level(logging.INFO, logger=weights.__name__):
        model = ResNet(num_classes=3, small_input=True, weights=str(path))
    report = model.weights_report
    assert set(report.loaded) == {k for k in source.state_dict() if k.startswith("stages.")}
    for part, original in zip([*model.stages, model.head], [*source.stages, source.head], strict=True):
        pairs = zip(part.state_dict().values(), original.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs) == (part is not model.head)
    assert report.left_out == {
        "net.head.3.weight": "the head: sized for the checkpoint's classes, never transferred",
        "net.head.3.bias": "the head: sized for the checkpoint's classes, never transferred",
        "loss.weight": "not a backbone stage",
    }
    assert model.preprocessing == {
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.2, 0.3],
        "image_size": 32,
        "resize_size": 36,
    }
    assert f"loaded {len(report.loaded)} tensors from checkpoint {path}" in caplog.text


def test_checkpoint_transfer_reports_mismatches(tmp_path: Path) -> None:
    source = ResNet(num_classes=3, small_input=True)  # a 3x3 stem conv; the new network's is 7x7
    path = write_checkpoint(tmp_path / "best.ckpt", source, CONTRACT)
    model = ResNet(num_classes=10, in_channels=1, arch="resnet34", weights=str(path))
    left_out = model.weights_report.left_out
    assert left_out["stages.0.0.weight"] == "shape mismatch: (64, 3, 3, 3) in the source, (64, 1, 7, 7) here"
    # resnet34 has more blocks than resnet18: they start from their initial values
    assert left_out["stages.1.2.conv1.weight"] == "not in the checkpoint: kept at its initial value"
    assert "stages.1.0.conv1.weight" in model.weights_report.loaded
    # the grey network asks for the average of the checkpoint's RGB statistics
    prep = model.preprocessing
    assert prep["mean"] == pytest.approx([0.5]) and prep["std"] == pytest.approx([0.7 / 3])


def test_checkpoint_to_grey_network_sums_the_first_filters(tmp_path: Path) -> None:
    source = ResNet(num_classes=3, small_input=True)
    path = write_checkpoint(tmp_path / "best.ckpt", source, CONTRACT)
    model = ResNet(num_classes=3, in_channels=1, small_input=True, weights=str(path))
    assert model.weights_report.adapted == ["stages.0.0.weight"]
    torch.testing.assert_close(model.stages[0][0].weight, source.stages[0][0].weight.sum(1, keepdim=True))


def test_unknown_weights_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"IMAGENET1K_V3.*resnet50.*IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        ResNet(num_classes=2, arch="resnet50", weights="IMAGENET1K_V3")


def test_weights_enum_spelling_resolves() -> None:
    assert (
        torchvision_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1")
        is tvm.ResNet18_Weights.IMAGENET1K_V1
    )
    with pytest.raises(ValueError, match="not a torchvision weights name for resnet18"):
        torchvision_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V1")


def test_missing_checkpoint_says_what_weights_takes(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.ckpt.*no such checkpoint.*null"):
        ResNet(num_classes=2, weights=str(tmp_path / "nope.ckpt"))


def test_a_bare_state_dict_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"not a cnnlab checkpoint.*place it in .*hub/checkpoints"):
        ResNet(num_classes=2, weights=str(path))


def test_from_scratch_carries_no_preprocessing() -> None:
    model = ResNet(num_classes=2, small_input=True, weights=None)
    assert model.preprocessing is None and model.weights_report is None


def test_weights_metadata_is_optional_field_by_field() -> None:
    from cnnlab.models.weights import weights_preprocessing

    classifier = weights_preprocessing(tvm.ResNet18_Weights.DEFAULT, channels=1)
    assert set(classifier) == {"mean", "std", "image_size", "resize_size"} and len(classifier["mean"]) == 1
    segmenter = weights_preprocessing(tvm.segmentation.DeepLabV3_ResNet50_Weights.DEFAULT, channels=3)
    assert set(segmenter) == {"mean", "std", "resize_size"}
    # detectors normalise and resize inside: their weights ask nothing of the data
    assert weights_preprocessing(tvm.detection.RetinaNet_ResNet50_FPN_Weights.DEFAULT, channels=3) == {}


def test_transfer_into_a_network_without_convolutions(tmp_path: Path) -> None:
    from cnnlab.models.mlp import MLP

    source = MLP(num_classes=3, in_channels=1, image_size=8, hidden=(16,))
    path = tmp_path / "run.ckpt"
    state = {f"net.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "cnnlab": {"contract": {"mean": [0.3], "std": [0.2]}}}, path)
    target = MLP(num_classes=5, in_channels=1, image_size=8, hidden=(16,), weights=str(path))
    assert torch.equal(target.stages[0][1].weight, source.stages[0][1].weight)
    assert target.preprocessing["mean"] == [0.3]
