"""CAMs that mean something: a classifier trained to find a bright square looks at the square; every task's
network gives its map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.train import train
from cnnlab.visualize import inside
from cnnlab.visualize.cli import main

pytestmark = pytest.mark.slow  # each trains a network first


def write_squares(root: Path, n_train: int, n_test: int, size: int = 32, side: int = 8) -> list[tuple]:
    """root/{train,test}/{plain,square}/*.png: noise, and noise with one bright square; the test squares."""
    rng = np.random.default_rng(0)
    squares = []
    for split, n in (("train", n_train), ("test", n_test)):
        for name in ("plain", "square"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 90, size=(size, size, 3)).astype(np.uint8)
                if name == "square":
                    top, left = rng.integers(0, size - side, size=2)
                    pixels[top : top + side, left : left + side] = 240
                    if split == "test":
                        squares.append((root / split / name / f"{i}.png", top, left))
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return squares


def test_the_cam_of_a_classifier_that_finds_a_bright_square_peaks_inside_it(make_cfg, tmp_path: Path) -> None:
    squares = write_squares(tmp_path / "squares", n_train=80, n_test=12)
    cfg = make_cfg(
        "data=image_folder",
        f"data.root={tmp_path / 'squares'}",
        "data.image_size=32",
        "data.num_workers=0",
        "model.head_hidden=0",
        "trainer.max_epochs=8",
        "export=null",
    )
    record = train(cfg)
    assert record["test/acc"] >= 0.9
    loaded = inside.load(record["best_checkpoint"])
    inside_square = 0
    for path, top, left in squares:
        net_input, _ = inside.prepare(loaded, path)
        values, _ = inside.cam(loaded, net_input, loaded.contract["class_names"].index("square"), "gradcam")
        row, column = np.unravel_index(values.argmax(), values.shape)
        inside_square += bool(top - 2 <= row < top + 10 and left - 2 <= column < left + 10)
    assert inside_square >= 0.75 * len(squares), f"{inside_square} of {len(squares)} peaks in their square"


@pytest.mark.parametrize(
    ("choice", "what"),
    [
        ("experiment=seg_shapes_unet", "gradcam for class"),
        ("experiment=det_shapes", "EigenCAM of the last backbone stage"),
        ("experiment=ae_denoise_digits", "reconstruction error"),
        ("model=capsnet", "gradcam for class"),  # scored by its capsule lengths, not logits
    ],
)
def test_cam_works_for_every_tasks_network(make_cfg, tmp_path: Path, choice: str, what: str) -> None:
    record = train(
        make_cfg(
            choice,
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "export=null",
        )
    )
    loaded = inside.load(record["best_checkpoint"])
    image = tmp_path / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, size=(50, 60, 3)).astype(np.uint8)).save(image)
    net_input, shown = inside.prepare(loaded, image)
    values, said = inside.cam(loaded, net_input, None, "eigencam" if "det_" in choice else "gradcam")
    assert said.startswith(what) and values.shape == tuple(shown.shape[1:])
    assert np.isfinite(values).all() and 0 <= values.min() and values.max() <= 1 + 1e-6
    # one input convention: forward_stages takes what forward takes, the contract's prepared image
    stage, maps = inside.features(loaded, net_input, None)
    assert stage == len(loaded.net.stages) - 1 and maps.dim() == 3 and maps.shape[0] > 1
    main(["cam", str(record["best_checkpoint"]), str(image), "--out", str(tmp_path / "figures")])
    assert len(list((tmp_path / "figures").glob("cam_*_image.png"))) == 1
