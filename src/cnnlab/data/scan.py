"""Checking image and mask files before a run trains on them: every bad file found at setup, none mid-epoch.

Each file is opened and decoded (JPEGs at an eighth of their size, which still reads every byte of the stream,
so a truncated file fails here): empty files, files no reader recognises, truncated images and formats cnnlab
does not read (GIF) are reported with their reason. A mask is decoded whole, for its size and the values it
holds, beside its image's size (read from the header). Results are cached beside the data, keyed by each
file's size and modification time, so a second run checks only what changed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from cnnlab.data.io import ImageReadError, read_mask

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


@dataclass(frozen=True)
class MaskFacts:
    """What reading one mask found: its reason when it (or its image) cannot be read; its PIL mode, its size
    and its image's (H, W), and the values it holds."""

    reason: str = ""
    mode: str = ""
    height: int = 0
    width: int = 0
    image_height: int = 0
    image_width: int = 0
    values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))  # a list when read back from the cache


def check_mask(image: Path, mask: Path) -> MaskFacts:
    """What ``mask`` holds (decoding it as training reads it) and the size of its ``image`` (its header)."""
    try:
        with Image.open(image) as photo:
            width, height = photo.size
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        return MaskFacts(f"{image}: unreadable image ({err})")
    mode = ""
    try:
        with Image.open(mask) as opened:
            mode = opened.mode
        decoded = read_mask(mask)
    except ImageReadError as err:  # read_mask says why (not one index per pixel, truncated, ...)
        return MaskFacts(str(err), mode)
    except (OSError, SyntaxError, ValueError) as err:
        return MaskFacts(f"{mask}: unreadable mask ({err})", mode)
    rows, columns = decoded.shape
    return MaskFacts("", mode, rows, columns, height, width, tuple(decoded.unique().tolist()))


def scan_images(files: Sequence[Path], root: Path, workers: int = 0) -> dict[Path, Checked]:
    """Check every file, reading earlier results from ``root``'s cache for files that did not change."""
    jobs = {path: (path,) for path in files}
    return _scan(jobs, root, root / ".cnnlab_scan.json", check_image, Checked, workers, "image files")


def scan_masks(pairs: Sequence[tuple[Path, Path]], root: Path, workers: int = 0) -> dict[Path, MaskFacts]:
    """The facts of every (image, mask) pair by mask, from ``root``'s cache for pairs that did not change."""
    jobs = {mask: (image, mask) for image, mask in pairs}
    return _scan(jobs, root, root / ".cnnlab_masks.json", check_mask, MaskFacts, workers, "masks")


def _scan(
    jobs: dict[Path, tuple[Path, ...]],
    root: Path,
    cache_file: Path,
    check: Callable[..., Any],
    result: type,
    workers: int,
    what: str,
) -> dict[Path, Any]:
    """``check(*files)`` of every job, read from ``cache_file`` where none of the job's files changed."""
    cached = _read(cache_file)
    keys = {name: [n for path in files for n in _key(path)] for name, files in jobs.items()}
    wanted = {field.name for field in fields(result)}
    results: dict[Path, Any] = {}
    todo = []
    for name, key in keys.items():
        entry = cached.get(_relative(name, root))
        if entry is not None and entry.get("key") == key and set(entry) - {"key"} == wanted:
            results[name] = result(**{k: v for k, v in entry.items() if k != "key"})
        else:
            todo.append(name)
    if todo:
        started = time.perf_counter()
        results.update(zip(todo, _check_all(check, [jobs[name] for name in todo], workers), strict=True))
        log.info(
            "data: checked %d %s in %.1f s (%d more unchanged since the last check)",
            len(todo),
            what,
            time.perf_counter() - started,
            len(jobs) - len(todo),
        )
        # entries of other files stay: two splits of one folder are scanned one after the other
        fresh = {_relative(name, root): {"key": keys[name], **asdict(results[name])} for name in jobs}
        _write(cache_file, cached | fresh)
    return results


def _check_all(check: Callable[..., Any], jobs: Sequence[tuple[Path, ...]], workers: int) -> Iterable[Any]:
    if workers > 1 and len(jobs) >= PARALLEL_FROM:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(check, *zip(*jobs, strict=True), chunksize=64))
    return [check(*files) for files in jobs]


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
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


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
