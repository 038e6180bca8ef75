"""Small datasets written in the real on-disk formats, for tests that read them through the real datamodules.

Every writer draws images whose class is learnable (a class-dependent band, colour or brightness under
noise), so a tiny training run on them can beat chance. Writers are deterministic for a given ``seed``.
"""

from __future__ import annotations

import colorsys
import gzip
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MIXED_SIZES = ((48, 36), (30, 52), (64, 64), (41, 29))  # (width, height)


def write_mnist(
    root: str | Path, n_train: int, n_test: int, fashion: bool = False, compress: bool = False, seed: int = 0
) -> Path:
    """Write MNIST (or Fashion-MNIST) idx files into ``root/MNIST/raw`` and return that folder.

    ``compress`` writes only the ``.gz`` files, as downloaded; otherwise the unpacked ``*-ubyte`` files.
    Class k is a bright horizontal band at rows 2k+2..2k+5 over dim noise.
    """
    folder = Path(root) / ("FashionMNIST" if fashion else "MNIST") / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            image[2 * label + 2 : 2 * label + 5, 3:25] = rng.integers(200, 256, size=(3, 22), dtype=np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return folder


def write_cifar10(root: str | Path, n_train_per_batch: int, n_test: int, seed: int = 0) -> Path:
    """Write CIFAR-10's python pickles into ``root/cifar-10-batches-py`` and return that folder.

    Class k is a colour of hue k/10 under noise. torchvision checks these files against the official MD5 sums,
    so tests that read them must disable that check (see tests/data/conftest.py).
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = [(f"data_batch_{i}", n_train_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in batches:
        labels = rng.permutation(np.arange(n) % 10)
        colours = np.array([_class_colour(int(k), 10) for k in labels])  # (n, 3) in [0, 1]
        images = colours[:, :, None, None] * 200 + rng.normal(0, 20, size=(n, 3, 32, 32))
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3 * 32 * 32)  # rows of R, G, B planes
        entry = {
            "batch_label": name,
            "labels": [int(k) for k in labels],
            "data": data,
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"num_cases_per_batch": n_train_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_image_folder(
    root: str | Path,
    classes: Sequence[str],
    n_per_class: int,
    sizes: Sequence[tuple[int, int]] = MIXED_SIZES,
    n_test_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,test}/<class>/*`` photos of mixed sizes and return ``root``.

    Most images are RGB JPEGs; every fifth is a greyscale PNG. Class k has its own hue and brightness.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", n_test_per_class)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array(_class_colour(k, len(classes))) * 220
            for i in range(n):
                width, height = sizes[(i + k) % len(sizes)]
                pixels = np.clip(colour + rng.normal(0, 15, size=(height, width, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if i % 5 == 4:
                    image.convert("L").save(folder / f"{split}_{i:03d}.png")
                else:
                    image.save(folder / f"{split}_{i:03d}.jpg", quality=90)
    return root


def write_landmarks(
    root: str | Path, n_classes: int, n_per_class: int, n_test_per_class: int = 2, seed: int = 0
) -> Path:
    """Write ``root/landmark_images/{train,test}/NN.Fake_Landmark_N/*`` photos and return that folder."""
    classes = [f"{k:02d}.Fake_Landmark_{k}" for k in range(n_classes)]
    return write_image_folder(
        Path(root) / "landmark_images", classes, n_per_class, n_test_per_class=n_test_per_class, seed=seed
    )


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    # idx: two zero bytes, the element type (0x08: unsigned byte), the rank, each size as big-endian int32
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _class_colour(k: int, n_classes: int) -> tuple[float, float, float]:
    # hue separates classes in colour; value separates them once converted to greyscale
    return colorsys.hsv_to_rgb(k / n_classes, 0.8, 0.35 + 0.6 * k / max(1, n_classes - 1))
