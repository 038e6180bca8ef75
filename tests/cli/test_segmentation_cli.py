"""Segmentation from the command line as a user runs it: train.py, then export (every format) and predict as
subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.test_cli import FORMAT_FILES, PREDICT, ROOT, run
from cnnlab.data.io import read_image
from cnnlab.data.shapes import ShapesDataset
from cnnlab.serving import runtime

# subprocesses that each start torch, after a training run: more than a few seconds together
pytestmark = pytest.mark.slow
CLASSES = ["background", "circle", "square", "triangle"]
TINY = [
    "experiment=seg_shapes_unet",
    "data.train_size=48",
    "data.test_size=8",
    "data.image_size=32",
    "data.batch_size=16",
    "model.widths=[8,16]",
    "scheduler=cosine",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "logger=csv",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny shapes segmenter trained by train.py, then exported by ``cnnlab.export`` into its own folder, in
    every format."""
    root = tmp_path_factory.mktemp("seg_cli")
    run(str(ROOT / "train.py"), *TINY, f"hydra.run.dir={root / 'run'}", "export=null")
    proc = run(
        "-m", "cnnlab.export", str(root / "run" / "checkpoints" / "best.ckpt"), "--out", str(root / "model")
    )
    assert f"exported to {root / 'model'}" in proc.stdout
    return root / "model"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A shapes image at the training size, and a larger, non-square one as a JPEG (resized to 32 x 41 inside
    the model: no multiple of the UNet's 2)."""
    folder = tmp_path_factory.mktemp("images")
    small = ShapesDataset(1, image_size=32, seed=5)[0][0]
    large = ShapesDataset(1, image_size=90, seed=6)[0][0][:, :70, :]
    paths = [folder / "small.png", folder / "large.jpg"]
    Image.fromarray(small.permute(1, 2, 0).numpy()).save(paths[0])
    Image.fromarray(large.permute(1, 2, 0).contiguous().numpy()).save(paths[1], quality=95)
    return paths


def test_export_writes_every_format_and_its_contract(exported: Path) -> None:
    described = json.loads((exported / "model.json").read_text())
    assert described["task"] == "segmentation" and described["class_names"] == CLASSES
    assert described["geometry"] == "resize" and described["image_size"] == 32
    assert described["output"]["classes"].startswith("the class index of every pixel")
    for fmt, name in zip(("pt2", "onnx", "torchscript"), FORMAT_FILES, strict=True):
        info = described["formats"][fmt]
        assert info["file"] == name and info["input_shape"] == ["dynamic", 3, "dynamic", "dynamic"], fmt
        assert info["max_abs_diff"]["probabilities"] < 1e-4 and info["max_abs_diff"]["classes"] <= 1e-3, fmt
        model = runtime.load(exported / name)
        assert (
            model.contract["serving"] == "cnnlab.serving.segmentation" and model.contract["image_size"] == 32
        )


@pytest.mark.parametrize(
    "name",
    [
        # the export folder: its first verified format, the .pt2 (see tests/tasks/test_segmentation.py)
        ".",
        "model.onnx",
        "model.pt",
    ],
)
def test_predict_writes_masks_and_overlays_and_prints_the_classes(
    exported: Path, images: list[Path], name: str
) -> None:
    proc = run("-c", PREDICT, str(exported / name), *map(str, images))
    assert "loaded: []" in proc.stdout
    out = exported / "predictions"  # beside the model by default
    assert f"written to {out}" in proc.stdout
    model = runtime.load(exported / name)
    for path in images:
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"{path}: "))
        shares = [part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(" -> ")[0].split(", ")]
        assert {name for name, _ in shares} <= set(CLASSES)
        assert sum(float(share.rstrip("%")) for _, share in shares) == pytest.approx(100, abs=0.5)
        photo = Image.open(path)
        mask, overlay = (
            Image.open(out / f"{path.stem}_mask.png"),
            Image.open(out / f"{path.stem}_overlay.png"),
        )
        assert mask.mode == "P" and overlay.mode == "RGB" and mask.size == overlay.size == photo.size
        # the mask PNG holds the exported model's class of every pixel, in VOC's palette
        expected = model(runtime.as_batch(read_image(path, 3), 3))["classes"][0].numpy()
        assert np.array_equal(np.asarray(mask), expected)
        assert mask.getpalette()[3:6] == [128, 0, 0]
        # the overlay is the photo where the class is the background, tinted elsewhere
        background = expected == 0
        assert np.array_equal(np.asarray(overlay)[background], np.asarray(photo.convert("RGB"))[background])


def test_predict_writes_probabilities_into_the_folder_asked(
    exported: Path, images: list[Path], tmp_path: Path
) -> None:
    proc = run(
        "-m",
        "cnnlab.predict",
        str(exported / "model.onnx"),
        str(images[1]),
        "--out",
        str(tmp_path),
        "--probabilities",
    )
    assert proc.stdout.startswith(f"{images[1]}: ")
    probabilities = np.load(tmp_path / "large_probabilities.npy")
    assert probabilities.shape == (4, 70, 90)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    mask = np.asarray(Image.open(tmp_path / "large_mask.png"))
    assert np.array_equal(probabilities.argmax(0), mask)


def test_predict_prints_the_same_records_as_json_from_every_format(
    exported: Path, images: list[Path]
) -> None:
    found = {}
    for name in FORMAT_FILES:
        proc = run("-m", "cnnlab.predict", str(exported / name), str(images[0]), "--json", "--probabilities")
        (found[name],) = json.loads(proc.stdout)
    reference = found["model.pt"]
    assert reference["image"] == str(images[0]) and reference["size"] == [32, 32]
    assert np.asarray(reference["probabilities"]).shape == (4, 32, 32)
    for record in found.values():
        assert np.mean(np.asarray(record["classes"]) != np.asarray(reference["classes"])) <= 1e-3
        np.testing.assert_allclose(record["probabilities"], reference["probabilities"], atol=1e-4)
        assert [s["class"] for s in record["shares"]] == [s["class"] for s in reference["shares"]]
