"""How much the decoded cache saves a segmentation folder of photos on the DataLoader path (masks never take
the in-memory path): the training loader's epochs with every photo and mask decoded per sample, and read
from the cache.

    python scripts/bench_decoded_cache.py [--images 300] [--size 512 384] [--image-size 96] [--workers 1]

Writes a mask folder (``images/*.jpg`` with ``masks/*.png``) once under ``--folder`` (reused when it exists),
then alternates ``data.decoded_cache=false`` and ``auto`` (``--repeats`` times each): the setup's seconds (the
first ``auto`` builds the cache) and the seconds of each loader epoch, with the ``seg_basic`` augmentation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import segmentation_presets
from cnnlab.data.mask_folder import MaskFolderDataModule
from cnnlab.tasks.segmentation import SegmentationTask


def write_masks(root: Path, count: int, size: tuple[int, int]) -> Path:
    """``count`` noisy JPEG photos of ``size`` (width, height), each with a PNG mask of one rectangle."""
    if (root / "masks").is_dir() and len(list((root / "masks").glob("*.png"))) == count:
        return root
    rng = np.random.default_rng(0)
    width, height = size
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), np.uint8)
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[y : y + height // 3, x : x + width // 3] = 1 + i % 2
        Image.fromarray(photo).save(root / "images" / f"{i:05d}.jpg", quality=90)
        Image.fromarray(mask).save(root / "masks" / f"{i:05d}.png")
    return root


def measure(root: Path, option: str, image_size: int, workers: int, epochs: int) -> dict[str, float]:
    """The setup's seconds and the median loader epoch with ``data.decoded_cache=option``."""
    started = time.perf_counter()
    dm = MaskFolderDataModule(
        root=root,
        num_classes=3,
        image_size=image_size,
        batch_size=16,
        num_workers=workers,
        decoded_cache=option,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        spec=SegmentationTask.samples,
        augmentation=segmentation_presets.basic,
    )
    dm.setup("fit")
    setup = time.perf_counter() - started
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        images = sum(len(batch[0]) for batch in dm.train_dataloader())
        times.append(time.perf_counter() - started)
    return {"setup": setup, "epoch": statistics.median(times), "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 384), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--image-size", type=int, default=96, help="the training size (data.image_size)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("outputs/bench/data/masks"))
    args = parser.parse_args()
    if args.images < 4:
        parser.error("--images: at least 4 (a test split, and training images besides)")
    width, height = args.size
    root = write_masks(args.folder / f"{args.images}_{width}x{height}", args.images, (width, height))
    print(f"{args.images} photos of {width} x {height} px in {root}, trained at {args.image_size} px")
    for _ in range(args.repeats):
        for option in ("false", "auto"):
            got = measure(root, option, args.image_size, args.workers, args.epochs)
            print(
                f"decoded_cache={option}: setup {got['setup']:.2f} s, loader epoch {got['epoch']:.2f} s "
                f"({got['images']:.0f} images)",
                flush=True,
            )


if __name__ == "__main__":
    main()
