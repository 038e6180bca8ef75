"""How long the bad-file check of an image folder takes: first run (every file decoded) and cached.

    python scripts/bench_scan.py [--images 10000] [--size 256 192] [--workers 2] [--folder DIR]

Writes a folder of JPEG photos in ``train/<class>/`` (once; reused when it exists), then times
``cnnlab.data.scan.scan_images`` twice: the first pass decodes every file, the second reads the cache.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data.scan import scan_images


def write_photos(folder: Path, count: int, size: tuple[int, int], classes: int = 10) -> list[Path]:
    """``count`` noisy JPEG photos of ``size`` (width, height) spread over ``classes`` class folders."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    paths = []
    for i in range(count):
        path = folder / "train" / f"class_{i % classes}" / f"{i:05d}.jpg"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.roll(base, i, axis=1)).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    """Command line: write the folder, time both passes, print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 192), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument(
        "--workers", type=int, default=2, help="processes of the first pass (data.num_workers)"
    )
    parser.add_argument(
        "--folder", type=Path, default=None, help="where to write the photos (default: a temp dir)"
    )
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="cnnlab_scan_"))
    started = time.perf_counter()
    paths = write_photos(folder, args.images, tuple(args.size))
    written = time.perf_counter() - started
    print(f"{len(paths)} photos of {args.size[0]}x{args.size[1]} px in {folder} ({written:.1f} s)")
    (folder / ".cnnlab_scan.json").unlink(missing_ok=True)
    for label in ("first run (decodes every file)", "cached (second run)"):
        started = time.perf_counter()
        checked = scan_images(paths, folder, workers=args.workers)
        seconds = time.perf_counter() - started
        good = sum(c.ok for c in checked.values())
        print(f"{label}: {seconds:.2f} s, {len(paths) / seconds:,.0f} files/s, {good} ok")
    if args.folder is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
