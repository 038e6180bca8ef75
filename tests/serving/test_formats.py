"""Every file format holds the same graph and contract; class activation maps travel in every format; a file
that is no exported model is explained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from cnnlab.errors import CheckpointError
from cnnlab.export import parity
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.models.torchvision_nets import VGG
from cnnlab.serving import classification, formats, runtime

CONTRACT = {
    "class_names": ["cat", "dog", "fox"],
    "in_channels": 3,
    "image_size": 16,
    "resize_size": 18,
    "geometry": "crop",
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.2, 0.2],
    "task": "classification",
    "serving": "cnnlab.serving.classification",
}


@pytest.fixture(scope="module")
def pooled_linear() -> classification.Exported:
    """A small CNN whose head is global pooling then one linear layer, wrapped for export."""
    torch.manual_seed(0)
    net = SimpleCNN(3, 3, 16, widths=[8, 16], head_hidden=0).eval()
    return classification.wrap(net, CONTRACT).eval()


@pytest.fixture(scope="module")
def written(pooled_linear: classification.Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wrapper in every format, as export writes them."""
    folder = tmp_path_factory.mktemp("formats")
    contract = dict(CONTRACT, outputs=list(pooled_linear.outputs))
    for fmt in formats.FORMATS:
        path = folder / f"model{formats.SUFFIXES[fmt]}"
        formats.write(fmt, pooled_linear, torch.rand(2, 3, 16, 16), path, contract, dynamic=True)
    return folder


def test_a_pooled_linear_head_gives_class_activation_maps_that_sum_to_its_logits(
    pooled_linear: classification.Exported,
) -> None:
    assert pooled_linear.outputs == ("probabilities", "cams")
    images = torch.rand(2, 3, 21, 30)
    with torch.no_grad():
        probabilities, cams = pooled_linear(images)
    linear = classification.cam_layer(pooled_linear.net)
    # CAM (Zhou et al.): the logits are the maps' means plus the bias, so the maps show what decided
    torch.testing.assert_close(torch.softmax(cams.mean((2, 3)) + linear.bias, 1), probabilities)


def test_heads_that_are_not_pooling_then_one_linear_layer_have_no_maps() -> None:
    assert classification.cam_layer(SimpleCNN(3, 3, 16, widths=[8])) is None  # a hidden layer after pooling
    assert classification.cam_layer(VGG(3, 3, image_size=64, depth=11)) is None
    assert classification.wrap(SimpleCNN(3, 3, 16, widths=[8]), CONTRACT).outputs == ("probabilities",)


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_every_format_runs_the_module_at_any_size_and_carries_the_contract(
    fmt: str, written: Path, pooled_linear: classification.Exported
) -> None:
    model = runtime.load(written / f"model{formats.SUFFIXES[fmt]}")
    assert model.format == fmt and model.contract["class_names"] == ["cat", "dog", "fox"]
    assert not (written / "model.json").exists()  # the contract came from inside the file
    batches = [torch.rand(3, 3, 16, 16), torch.rand(1, 3, 41, 17), torch.rand(2, 3, 24, 61)]
    with torch.no_grad():
        expected = [dict(zip(pooled_linear.outputs, pooled_linear(b), strict=True)) for b in batches]
    diffs = parity(expected, [model(b) for b in batches])
    assert diffs["probabilities"] < 1e-5 and diffs["cams"] < 1e-4
    assert model.runner.shape[0] is None and model.runner.shape[2:] == [None, None]


def test_records_are_the_same_from_every_format(written: Path) -> None:
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    found = [runtime.predict(runtime.load(p), [image], top_k=2)[0] for p in sorted(written.iterdir())]
    assert [c["class"] for c in found[0]["top"]] == [c["class"] for c in found[1]["top"]]
    for record in found:
        assert len(record["top"]) == 2 and record["cam"]["class"] == record["top"][0]["class"]
        json.dumps(record)  # plain values
        assert max(max(row) for row in record["cam"]["values"]) == pytest.approx(1.0)
        # 40 x 50 resized to 18 x 22, its centre 16 x 16 cropped: the part of the image the maps cover
        assert record["cam"]["region"] == [6.82, 2.22, 43.18, 37.78]
    probabilities = [[c["probability"] for c in r["top"]] for r in found]
    assert max(abs(a - b) for p in probabilities[1:] for a, b in zip(p, probabilities[0], strict=True)) < 1e-5


def test_a_grey_model_takes_colour_images_and_a_colour_model_grey_ones() -> None:
    grey = runtime.as_batch(torch.full((3, 4, 4), 255, dtype=torch.uint8), 1)
    colour = runtime.as_batch(torch.zeros((1, 4, 4), dtype=torch.uint16), 3)
    assert grey.shape == (1, 1, 4, 4) and float(grey.max()) == pytest.approx(1.0, abs=1e-3)
    assert colour.shape == (1, 3, 4, 4) and colour.dtype == torch.float32
    with pytest.raises(ValueError, match="takes 3-channel images; got 2"):
        runtime.as_batch(torch.zeros(2, 4, 4), 3)


def test_files_that_are_no_exported_model_are_explained(written: Path, tmp_path: Path) -> None:
    cases = {
        tmp_path / "best.ckpt": "is a training checkpoint, not an exported model: export it first",
        tmp_path / "notes.pt2": "truncated (an interrupted copy?) or another kind of file",
        tmp_path / "model.h5": "its suffix is not .pt2, .onnx or .pt",
        tmp_path / "half.onnx": "truncated (an interrupted copy?) or another kind of file",
    }
    (tmp_path / "best.ckpt").write_bytes(b"PK")
    (tmp_path / "notes.pt2").write_text("not a program")
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    whole = (written / "model.onnx").read_bytes()
    (tmp_path / "half.onnx").write_bytes(whole[: len(whole) // 2])
    for path, words in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(words)):
            runtime.load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        runtime.load(tmp_path / "missing.pt2")
    with pytest.raises(CheckpointError, match="holds no exported model"):
        runtime.load(tmp_path)


def test_an_export_folder_loads_its_first_verified_format(written: Path, tmp_path: Path) -> None:
    for name in ("model.onnx", "model.pt"):
        (tmp_path / name).write_bytes((written / name).read_bytes())
    (tmp_path / "model.json").write_text(json.dumps({"formats": {"onnx": {"error": "failed"}}}))
    assert runtime.load(tmp_path).format == "torchscript"
