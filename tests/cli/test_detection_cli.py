"""Detection from the command line: train.py writes an export whose boxes are the checkpoint's; export and
predict run as subprocesses; predict draws the boxes and writes a JSON per image, without training code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.test_cli import QUIET, ROOT, run
from cnnlab.checkpoints import load_task
from cnnlab.data.shapes import ShapesDataset
from cnnlab.serving.detection import PALETTE

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


def test_export_gives_the_checkpoints_boxes(det_run: Path, photos: list[Path]) -> None:
    task = load_task(det_run / "checkpoints" / "best.ckpt").eval()
    exported = torch.jit.load(str(det_run / "export" / "model.pt"))
    compared = 0
    for path in photos:
        image = read_png(path)
        with torch.no_grad():
            expected = task.net([image.float() / 255])[0]
            got = exported(image, 0.0)
        assert len(got["boxes"]) == len(expected["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)
        compared += len(got["boxes"])
        # the threshold in the contract applies when none is passed
        kept = exported(image)
        assert (kept["scores"] >= exported.score_threshold).all()
        assert len(kept["scores"]) == int((expected["scores"] >= exported.score_threshold).sum())
    assert compared > 0


def test_export_cli_writes_the_contract_with_its_threshold(det_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    proc = run("-m", "cnnlab.export", str(det_run / "checkpoints" / "best.ckpt"), "--out", str(out))
    assert "exported" in proc.stdout and (out / "model.pt").is_file()
    contract = json.loads((out / "model.json").read_text())
    assert contract["task"] == "detection" and contract["score_threshold"] == 0.5
    assert contract["class_names"] == ["background", "circle", "square", "triangle"]
    assert "boxes" in contract["output"] and "any size" in contract["input"]


def predict(model: Path, images: list[Path], *options: str) -> subprocess.CompletedProcess:
    # torchvision's operators (nms, box_iou) must be registered before a detector's TorchScript graph loads;
    # until cnnlab.predict imports torchvision itself, the command is run with it imported first
    code = (
        "import sys; import torchvision; from cnnlab.predict import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "finally:\n"
        "    print('loaded:', sorted(m for m in ('lightning', 'hydra', 'cnnlab.train') if m in sys.modules))"
    )
    return run("-c", code, str(model), *map(str, images), *options)


def test_predict_draws_boxes_and_writes_json(det_run: Path, photos: list[Path], tmp_path: Path) -> None:
    model = det_run / "export" / "model.pt"
    exported = torch.jit.load(str(model))
    out = tmp_path / "predicted"
    proc = predict(model, photos, "--threshold", "0.0", "--out", str(out))
    assert "loaded: []" in proc.stdout  # no Lightning, Hydra or training code
    for path in photos:
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"{path}: "))
        record = json.loads((out / f"{path.stem}.json").read_text())
        expected = exported(read_png(path), 0.0)
        assert line.startswith(f"{path}: {len(expected['boxes'])} boxes: ") and record["threshold"] == 0.0
        boxes = torch.tensor([d["box"] for d in record["detections"]])
        torch.testing.assert_close(boxes, expected["boxes"], atol=0.01, rtol=0)
        names = [exported.class_names[i] for i in expected["labels"]]
        assert [d["label"] for d in record["detections"]] == names
        drawn, original = read_png(out / f"{path.stem}.png"), read_png(path)
        assert drawn.shape == original.shape and not torch.equal(drawn, original)


def test_predict_at_the_best_score_draws_that_box_beside_the_model(det_run: Path, photos: list[Path]) -> None:
    model = det_run / "export" / "model.pt"
    with torch.no_grad():
        best = torch.jit.load(str(model))(read_png(photos[0]), 0.0)
    threshold = float(best["scores"][0])
    proc = predict(model, photos[:1], "--threshold", str(threshold))
    name = best["labels"][0]
    assert f"{photos[0]}: 1 box: 1 " in proc.stdout
    folder = det_run / "export" / "predictions"  # the default: beside the model
    (detection,) = json.loads((folder / f"{photos[0].stem}.json").read_text())["detections"]
    assert detection["label_index"] == int(name) and detection["score"] == pytest.approx(threshold, abs=1e-4)
    # its outline, in its class's colour, runs along the box's top edge
    drawn = read_png(folder / f"{photos[0].stem}.png")
    x0, y0, x1, _ = (round(v) for v in detection["box"])
    colour = torch.tensor(PALETTE[int(name) % len(PALETTE)])
    top = drawn[:, min(y0, drawn.shape[1] - 1), x0 : max(x1, x0 + 1)]
    assert (top == colour[:, None]).all(0).float().mean() > 0.5
