"""Checking image files before a run trains on them: every bad file found at setup, none mid-epoch.

Each file is opened and decoded (JPEGs at an eighth of their size, which still reads every byte of the stream,
so a truncated file fails here): empty files, files no reader recognises, truncated images and formats cnnlab
does not read (GIF) are reported with their reason. Results are cached beside the data, keyed by each file's
size and modification time, so a second run checks only what changed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

#: extensions of the photo formats read (Pillow decodes each)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: files cnnlab names as skipped rather than reads, with the reason
REFUSED_EXTENSIONS = {".gif": "a GIF (animation or palette format): convert it to PNG to use it"}
#: above this many unchecked files, several processes share the work
PARALLEL_FROM = 256


@dataclass(frozen=True)
class Checked:
    """What checking one file found: its reason when it is bad, else its size in pixels."""

    reason: str = ""
    width: int = 0
    height: int = 0

    @property
    def ok(self) -> bool:
        return not self.reason


def check_image(path: str | os.PathLike) -> Checked:
    """Whether ``path`` is an image cnnlab can read, decoding it fully."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in REFUSED_EXTENSIONS:
        return Checked(REFUSED_EXTENSIONS[suffix])
    if suffix not in IMAGE_EXTENSIONS:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        return Checked(f"not an image file ({suffix or 'no extension'}); images are {kinds}")
    try:
        if path.stat().st_size == 0:
            return Checked("an empty file (0 bytes)")
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
    except UnidentifiedImageError:
        return Checked("not an image: no reader recognises its contents")
    except (OSError, SyntaxError, ValueError) as err:
        truncated = "truncated" in str(err).lower()
        return Checked("a truncated image (an interrupted copy or download?)" if truncated else str(err))
    return Checked(width=width, height=height)


def scan_images(files: Sequence[Path], root: Path, workers: int = 0) -> dict[Path, Checked]:
    """Check every file, reading earlier results from ``root``'s cache for files that did not change."""
    cache_file = root / ".cnnlab_scan.json"
    cached = _read(cache_file)
    keys = {path: _key(path) for path in files}
    results: dict[Path, Checked] = {}
    todo = []
    for path, key in keys.items():
        entry = cached.get(_relative(path, root))
        if entry is not None and entry.get("key") == key:
            results[path] = Checked(entry["reason"], entry["width"], entry["height"])
        else:
            todo.append(path)
    if todo:
        started = time.perf_counter()
        results.update(zip(todo, _check_all(todo, workers), strict=True))
        log.info(
            "data: checked %d image files in %.1f s (%d more unchanged since the last check)",
            len(todo),
            time.perf_counter() - started,
            len(files) - len(todo),
        )
        entries = {_relative(path, root): {"key": keys[path], **asdict(results[path])} for path in files}
        _write(cache_file, entries)
    return results


def _check_all(paths: Sequence[Path], workers: int) -> Iterable[Checked]:
    if workers > 1 and len(paths) >= PARALLEL_FROM:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(check_image, paths, chunksize=64))
    return [check_image(path) for path in paths]


def _key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, entries: dict) -> None:
    if not os.access(path.parent, os.W_OK):
        log.info("data: %s is read-only, so file checks are not cached there", path.parent)
        return
    partial = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        partial.write_text(json.dumps(entries))
        partial.replace(path)
    except OSError as err:  # a cache only: a run goes on without it
        log.warning("data: could not cache the file checks in %s (%s)", path, err)
