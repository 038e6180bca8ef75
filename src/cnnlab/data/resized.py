"""The decoded cache of the DataLoader path: every photo decoded once, at the training size, for every epoch.

Data that takes the DataLoader path (too large for memory, ``data.in_memory=false``, or samples with masks)
would decode and resize each photo again in every epoch. Instead, the first run decodes each image of a
file-backed dataset once, resizes its shorter side to ``resize_size`` (what evaluation's ``crop`` geometry
and the resizing presets do first) and writes it as uint8 into one file beside the photos, named by the files
as the in-memory cache is (``memory.cache_file``: names, sizes, times; the cache of the files as they were
before a change is deleted); masks follow with nearest-neighbour resizing, as v2 moves them. Later epochs and
runs read one record per image from that file through a memory map, in DataLoader workers; the per-sample
transforms then run as before on the smaller image.

What it serves equals the per-sample path within a grey level: evaluation's resize happens once in float
and is rounded to 8 bits (the resizing presets resize 8-bit images, which rounds too). One difference: the
``standard`` preset's random resized crops come from the resized photo rather than the full-size file, as
on the in-memory path. 16-bit images, and targets other than numbers and one ``mask``, are not cached.

File layout (``.cnnlab_resized_<size>px_<files>_<state>.u8``): the records back to back (an image's
C x H x W bytes, then its mask's H x W bytes unless it is all zeros), then a JSON index (offset, shape, mask
and target of every item), its length (8 bytes, little-endian) and ``MAGIC``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from cnnlab.data import memory
from cnnlab.samples import as_image

log = logging.getLogger(__name__)

MAGIC = b"CNNLAB1\n"
#: what an item's mask offset says when it stores no mask bytes: the item has no mask, or an all-zero one
NO_MASK, ZEROS = -2, -1
#: auto leaves the cache off when it would take more than this share of the disk's free space
AUTO_DISK_SHARE = 0.5
#: how many files' headers auto reads to judge the photos' size
PEEK = 16


def choice(value: Any) -> str:
    """``data.decoded_cache`` as one of auto, true, false."""
    return memory.choice(value, "decoded_cache", "when the photos are larger than the training size")


class ResizedFiles(Dataset):
    """The items of a file-backed dataset read from its decoded cache: the image (and mask) at the cached
    size, the other targets as the dataset gives them.

    It stands in for that dataset (``base``): what the dataset tells of its files (``samples``, the classes
    its masks hold) is read from it, so checks and warnings over the splits see the same reader.
    """

    def __init__(self, path: Path, base: Dataset | None = None) -> None:
        self.path, self.base = path, base
        with open(path, "rb") as file:
            file.seek(-16, os.SEEK_END)
            length, magic = struct.unpack("<Q8s", file.read(16))
            if magic != MAGIC:
                raise ValueError("it does not end in a cnnlab index")
            file.seek(-16 - length, os.SEEK_END)
            index = json.loads(file.read(length))
        self.offsets: list[int] = index["at"]
        self.shapes: list[list[int]] = index["shape"]
        self.masks: list[int] = index["mask"]
        self.targets: list[Any] = index["targets"]
        self.nbytes = path.stat().st_size
        # opened here: forked workers share the mapping; a pickled copy (spawned workers) maps the file again
        self._pixels: np.memmap | None = np.memmap(path, dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}

    def __getattr__(self, name: str) -> Any:
        base = self.__dict__.get("base")  # absent while a pickled copy is restored
        if base is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(base, name)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, Any]:
        if self._pixels is None:
            self._pixels = np.memmap(self.path, dtype=np.uint8, mode="r")
        (c, h, w), at, mask_at = self.shapes[index], self.offsets[index], self.masks[index]
        image = torch.from_numpy(np.array(self._pixels[at : at + c * h * w])).view(c, h, w)
        target = self.targets[index]
        if mask_at != NO_MASK:
            mask = (
                torch.zeros(h, w, dtype=torch.int64)
                if mask_at == ZEROS
                else torch.from_numpy(np.array(self._pixels[mask_at : mask_at + h * w])).view(h, w).long()
            )
            target = {**target, "mask": tv_tensors.Mask(mask)}
        return tv_tensors.Image(image), target


class _Resizing(Dataset):
    """The items of ``base`` at ``size`` px as the cache stores them: what the building pass reads, in
    workers if any. What cannot be cached comes back as its reason."""

    def __init__(self, base: Dataset, size: int) -> None:
        self.base, self.size = base, size

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Any, Tensor | None] | str:
        image, target = self.base[index]
        image = as_image(image).as_subclass(Tensor)
        if image.dtype != torch.uint8:
            return f"its images are {image.dtype}, and the decoded cache holds 8-bit images"
        image = memory.shorter_side(image, self.size)
        if isinstance(target, (int, bool)):
            return image, int(target), None
        if not isinstance(target, dict):
            return f"its targets are {type(target).__name__}, which the decoded cache does not hold"
        kept, mask = {}, None
        for key, value in target.items():
            if key == "mask" and isinstance(value, tv_tensors.Mask):
                mask = F.resize(value, [self.size]).as_subclass(Tensor)  # nearest, as v2 resizes masks
                if mask.numel() and (mask.min() < 0 or mask.max() > 255):
                    return "its masks hold values outside 0-255, and the decoded cache stores 8-bit masks"
            elif isinstance(value, (int, bool)) or (isinstance(value, Tensor) and value.numel() == 1):
                kept[key] = int(value)
            else:
                return f"its items carry {key}, which the decoded cache does not hold"
        return image, kept, mask


def build(base: Dataset, size: int, path: Path, num_workers: int) -> ResizedFiles:
    """Decode every item of ``base`` once at ``size`` px into the cache file ``path``."""
    index: dict[str, list[Any]] = {"at": [], "shape": [], "mask": [], "targets": []}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            at = 0
            for image, target, mask in memory.decode_pass(_Resizing(base, size), num_workers):
                index["at"].append(at)
                index["shape"].append(list(image.shape))
                index["targets"].append(target)
                at += out.write(image.contiguous().numpy().tobytes())
                if mask is None:
                    index["mask"].append(NO_MASK)
                elif not mask.any():
                    index["mask"].append(ZEROS)  # MVTec's good images: nothing worth storing
                else:
                    index["mask"].append(at)
                    at += out.write(mask.to(torch.uint8).contiguous().numpy().tobytes())
            encoded = json.dumps(index).encode()
            out.write(encoded + struct.pack("<Q8s", len(encoded), MAGIC))
        tmp.replace(path)  # atomic: DDP ranks may build it at the same time
    finally:
        tmp.unlink(missing_ok=True)
    return ResizedFiles(path, base)


def serve(
    splits: dict[str, Dataset],
    option: str,
    size: int,
    geometry: str,
    cache_dir: Path | None,
    num_workers: int,
) -> dict[str, Dataset]:
    """The splits with the photos of their file-backed datasets read from the decoded cache, when
    ``option`` (``data.decoded_cache``) asks for it or, with auto, decoding them costs something."""
    if option == "false":
        return splits
    bases = _file_bases(splits)
    why, cached = _unsuitable(bases, option, size, geometry, cache_dir), None
    if why is None:
        assert cache_dir is not None
        try:
            cached = _open_or_build(bases, size, cache_dir, num_workers)
        except memory.NotInMemory as err:
            why = str(err)
        except OSError as err:  # a full disk, say: it is only a cache, the run goes on without it
            log.warning(
                "data: could not write the decoded cache in %s (%s); decoded per sample", cache_dir, err
            )
            return splits
    if why is not None:
        if option == "true":
            raise ValueError(
                f"data.decoded_cache=true cannot serve this data: {why}; set data.decoded_cache=auto"
            )
        if bases:
            log.info("data: photos decoded per sample, no decoded cache (%s)", why)
        return splits
    if cached is None:
        log.info("data: %s is read-only, so photos are decoded per sample (no decoded cache)", cache_dir)
        return splits
    return {name: _swap(split, lambda base: cached.get(id(base))) for name, split in splits.items()}


def _open_or_build(
    bases: list[Dataset], size: int, cache_dir: Path, num_workers: int
) -> dict[int, ResizedFiles] | None:
    """The decoded cache of every base (by id), read where it exists and built where not; None when one
    is missing and ``cache_dir`` is read-only."""
    started, cached, built = time.perf_counter(), {}, 0
    writable = os.access(cache_dir, os.W_OK)
    for base in bases:
        # the layout in the name too; the bases are read from files, so there is a name
        path = memory.cache_file(cache_dir, "resized", base, size, MAGIC.decode().strip(), suffix=".u8")
        assert path is not None
        found = _read(path, base) if path.is_file() else None
        if found is None and not writable:
            return None
        if found is None:
            found = build(base, size, path, num_workers)
            built += len(found)
            memory.drop_stale(path)
        cached[id(base)] = found
    count = sum(len(found) for found in cached.values())
    megabytes = sum(found.nbytes for found in cached.values()) / 1e6
    done = f"built for {built} images in {time.perf_counter() - started:.1f} s" if built else "reused"
    if built and count > built:
        done += f" and reused for {count - built}"
    log.info(
        "data: decoded cache %s: %d images at %d px, %.1f MB in %s", done, count, size, megabytes, cache_dir
    )
    return cached


def _unsuitable(
    bases: list[Dataset], option: str, size: int, geometry: str, cache_dir: Path | None
) -> str | None:
    """Why the decoded cache does not serve these datasets (auto also asks whether it pays), or None."""
    if not bases:
        return "the data is not read from image files"
    if geometry not in ("crop", "resize"):
        return f"the task shapes evaluation images by {geometry!r}; the cache holds a shorter side's resize"
    if cache_dir is None:
        return "the datamodule names no folder beside its files"
    if option == "true":
        return None
    images = [files[0] for base in bases for files in memory.files_of(base)]
    sides, longer = [], []
    for path in images[:: max(1, len(images) // PEEK)][:PEEK]:
        try:
            with Image.open(path) as photo:  # the header only: nothing is decoded
                sides.append(min(photo.size))
                longer.append(max(photo.size) / max(1, min(photo.size)))
        except (OSError, SyntaxError, ValueError):
            continue  # a bad file is the scan's or the reader's to report
    median = sorted(sides)[len(sides) // 2] if sides else 0
    if median <= size:
        return f"the photos are about {median} px, no larger than the training size ({size} px)"
    channels = getattr(bases[0], "channels", 3)
    needed = len(images) * channels * size * size * (sum(longer) / max(1, len(longer)))
    free = shutil.disk_usage(cache_dir).free
    if needed > AUTO_DISK_SHARE * free:
        return f"it would take {needed / 1e9:.1f} GB of the {free / 1e9:.1f} GB free in {cache_dir}"
    return None


def _read(path: Path, base: Dataset) -> ResizedFiles | None:
    """The cache at ``path`` of ``base``'s items, or None when it is unreadable (it is then built again)."""
    try:
        found = ResizedFiles(path, base)
        if len(found) != len(base):  # type: ignore[arg-type]
            raise ValueError(f"it holds {len(found)} images, not {len(base)}")  # type: ignore[arg-type]
        return found
    except (OSError, ValueError, KeyError, struct.error) as err:
        log.warning("data: the decoded cache %s is unreadable (%s); decoding again", path, err)
        return None


def _file_bases(splits: dict[str, Dataset]) -> list[Dataset]:
    """The datasets read from files behind the splits, each once."""
    found: dict[int, Dataset] = {}

    def note(base: Dataset) -> None:
        if memory.files_of(base):
            found.setdefault(id(base), base)

    for split in splits.values():
        _swap(split, note)
    return list(found.values())


def _swap(dataset: Dataset, replace: Callable[[Dataset], Dataset | None]) -> Dataset:
    """``dataset`` with every base dataset behind its subsets, concatenations and wrappers (``source``)
    replaced by ``replace(base)`` where that is not None."""
    if isinstance(dataset, Subset):
        return Subset(_swap(dataset.dataset, replace), dataset.indices)
    if isinstance(dataset, ConcatDataset):
        return ConcatDataset([_swap(inner, replace) for inner in dataset.datasets])
    inner = getattr(dataset, "source", None)
    if isinstance(inner, Dataset):  # a wrapper that reshapes items (MVTec's WithoutMasks): keep it outside
        wrapper = copy.copy(dataset)
        wrapper.source = _swap(inner, replace)  # type: ignore[attr-defined]
        return wrapper
    return replace(dataset) or dataset
