"""Detection from the command line: train.py writes an export (every format) whose boxes are the checkpoint's,
at any image size; export and predict run as subprocesses; predict draws the boxes and writes a JSON per
image, without training code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cli.test_cli import FORMAT_FILES, PREDICT, QUIET, ROOT, run
from cnnlab.checkpoints import load_task
from cnnlab.data.shapes import ShapesDataset
from cnnlab.serving import detection, runtime
from cnnlab.serving.draw import BOX_COLOURS

# a few epochs on a few shapes; the network keeps its 100 best candidates (score_thresh 0), so that every
# image has boxes to compare however little it learnt
SMALL_RUN = [
    "experiment=det_shapes",
    "data.train_size=24",
    "data.test_size=4",
    "data.batch_size=8",
    "model.score_thresh=0.0",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def det_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python train.py experiment=det_shapes` on a few images for three epochs."""
    out = tmp_path_factory.mktemp("det_cli") / "run"
    run(
        str(ROOT / "train.py"),
        *SMALL_RUN,
        "trainer.max_epochs=3",
        f"hydra.run.dir={out}",
        *QUIET,
    )
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two shapes pictures saved as PNG files of other sizes than the training images."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, size in enumerate((80, 96)):
        image, _ = ShapesDataset(2, image_size=size, seed=5)[index]
        paths.append(folder / f"shapes_{index}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def read_png(path: Path) -> torch.Tensor:
    """An RGB image file as a uint8 tensor (3, H, W), as predict reads it."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_every_format_gives_the_checkpoints_boxes_at_any_size(
    det_run: Path, photos: list[Path], name: str
) -> None:
    task = load_task(det_run / "checkpoints" / "best.ckpt").eval()
    module = detection.wrap(task.net, task.contract).eval()
    model = runtime.load(det_run / "export" / name)
    compared = 0
    for path in photos:
        image = runtime.as_batch(read_png(path), 3)
        height, width = image.shape[-2:]
        got = model(image)
        fixed = model.runner.shape[2:]
        if fixed == [None, None]:  # TorchScript: the module at the image's own size
            seen = image
        else:  # a graph of the training size: the loader resizes the image to it and maps the boxes back
            assert fixed == [64, 64]
            seen = F.interpolate(image, size=fixed, mode="bilinear", align_corners=False, antialias=True)
        with torch.inference_mode():
            expected = dict(zip(module.outputs, module(seen), strict=True))
        expected["boxes"] = expected["boxes"] * torch.tensor(
            [width / seen.shape[-1], height / seen.shape[-2]] * 2
        )
        # every detection, not only those kept: matched by class and overlap (NMS may order ties either way)
        diffs = detection.parity([{**expected, "keep": torch.ones_like(expected["keep"])}], [got])
        assert len(got["boxes"]) == len(expected["boxes"]) > 0 and diffs["unmatched"] == 0, diffs
        assert diffs["boxes"] < 1e-3 and diffs["scores"] < 1e-4, diffs
        assert (got["boxes"][:, 2::2] <= width + 1e-3).all() and (
            got["boxes"][:, 3::2] <= height + 1e-3
        ).all()
        # the threshold in the contract flags what predict keeps when none is given
        assert torch.equal(got["keep"], got["scores"] >= 0.5)
        compared += len(got["boxes"])
    assert compared > 0


def test_export_cli_writes_the_contract_with_its_threshold(det_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    ckpt = det_run / "checkpoints" / "best.ckpt"
    proc = run("-m", "cnnlab.export", str(ckpt), "--out", str(out), "--formats", "pt2")
    assert proc.stdout.startswith("pt2 ") and "max diff: boxes" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt2"]
    described = json.loads((out / "model.json").read_text())
    assert described["task"] == "detection" and described["score_threshold"] == 0.5
    assert described["class_names"] == ["background", "circle", "square", "triangle"]
    assert "boxes" in described["output"] and "any size in TorchScript" in described["input"]
    assert described["formats"]["pt2"]["input_shape"] == [1, 3, 64, 64]  # the training size


def predict(model: Path, images: list[Path], *options: str) -> subprocess.CompletedProcess:
    return run("-c", PREDICT, str(model), *map(str, images), *options)


def test_predict_draws_boxes_and_writes_json(det_run: Path, photos: list[Path], tmp_path: Path) -> None:
    model = det_run / "export" / "model.pt"
    exported = runtime.load(model)
    out = tmp_path / "predicted"
    proc = predict(model, photos, "--threshold", "0.0", "--out", str(out))
    assert "loaded: []" in proc.stdout  # no Lightning, Hydra or training code
    for path in photos:
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"{path}: "))
        record = json.loads((out / f"{path.stem}.json").read_text())
        (expected,) = runtime.predict(exported, [read_png(path)], threshold=0.0)
        count = len(expected["detections"])
        assert line.startswith(f"{path}: {count} boxes: ") and line.endswith(f" -> {out / path.stem}.png")
        assert record["threshold"] == 0.0 and record["box_format"] == "xyxy pixels" and count > 0
        boxes = torch.tensor([d["box"] for d in record["detections"]])
        torch.testing.assert_close(
            boxes, torch.tensor([d["box"] for d in expected["detections"]]), atol=0.01, rtol=0
        )
        assert [d["class"] for d in record["detections"]] == [d["class"] for d in expected["detections"]]
        assert all(d["class"] == exported.class_names[d["index"]] for d in record["detections"])
        drawn, original = read_png(out / f"{path.stem}.png"), read_png(path)
        assert drawn.shape == original.shape and not torch.equal(drawn, original)


def test_predict_at_the_best_score_draws_that_box_beside_the_model(det_run: Path, photos: list[Path]) -> None:
    model = det_run / "export" / "model.pt"
    best = runtime.load(model)(runtime.as_batch(read_png(photos[0]), 3))
    threshold = float(best["scores"][0])
    proc = predict(model, photos[:1], "--threshold", str(threshold))
    label = int(best["labels"][0])
    assert f"{photos[0]}: 1 box: 1 " in proc.stdout
    folder = det_run / "export" / "predictions"  # the default: beside the model
    (found,) = json.loads((folder / f"{photos[0].stem}.json").read_text())["detections"]
    assert found["index"] == label and found["score"] == pytest.approx(threshold, abs=1e-4)
    # its outline, in its class's colour, runs along the box's top edge
    drawn = read_png(folder / f"{photos[0].stem}.png")
    x0, y0, x1, _ = (round(v) for v in found["box"])
    colour = torch.tensor(BOX_COLOURS[label % len(BOX_COLOURS)])
    top = drawn[:, min(y0, drawn.shape[1] - 1), x0 : max(x1, x0 + 1)]
    assert (top == colour[:, None]).all(0).float().mean() > 0.5
