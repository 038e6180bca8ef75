"""The fast path for data that fits in memory: decoded once, served and augmented in whole batches.

Every image of a split is decoded once at the training size (the shorter side resized to ``resize_size``,
centre-cropped square, uint8) into one tensor (N, C, R, R); files are decoded once per dataset, cached on disk
beside them and keyed by the files (names, sizes, times). Batches are drawn from that tensor on the training
device, in the order ``EpochSampler`` gives for (seed, epoch), and augmented, scaled and normalised there as
whole batches, with no DataLoader workers and no per-sample Python: the presets ``none``, ``basic`` (random
crop with zero padding, flip) and ``standard`` (random resized crop, flip, colour jitter) are batched; any
other preset runs its own v2 steps image by image on the decoded tensor. Evaluation applies ``Evaluate`` (the
computation exported models repeat) to the batch. Random draws come from a generator seeded by (seed, epoch),
so a resumed run draws what an uninterrupted one did.

What it serves: image-level targets (class labels, anomaly flags). Masks and boxes take the DataLoader path
(where ``cnnlab.data.resized`` decodes photos once too). The naming of the caches (``cache_file``,
``drop_stale``), the 8-bit resize (``shorter_side``) and the decoding pass in workers (``decode_pass``) are
shared with that path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as F

from cnnlab.data import transforms as T
from cnnlab.samples import as_image, as_target, label_collate, stack_collate

log = logging.getLogger(__name__)

#: ``data.in_memory=auto`` holds a dataset in memory when its decoded tensor is at most this large
#: (and at most a quarter of the machine's memory)
AUTO_LIMIT_BYTES = 2 * 1024**3
#: the target keys this path serves; a task that needs others (masks, boxes) takes the DataLoader path
TARGETS = ("label", "anomaly")
CHOICES = ("auto", "true", "false")


class NotInMemory(Exception):
    """The data cannot be decoded ahead (into memory, or into the decoded cache); the message says why."""


def choice(value: Any, option: str = "in_memory", auto: str = "in memory when the decoded images fit") -> str:
    """An auto/true/false option such as ``data.in_memory`` as one of auto, true, false."""
    text = str(value).lower()
    if text not in CHOICES:
        raise ValueError(f"data.{option}={value}: choose auto ({auto}), true or false")
    return text


def eligible(keys: tuple[str, ...], collate: Callable[..., Any]) -> str | None:
    """Why samples with ``keys`` collated by ``collate`` cannot be served from memory, or None."""
    others = [k for k in keys if k not in TARGETS]
    if others:
        return f"the task uses {', '.join(others)}, which the in-memory path does not carry"
    if collate not in (label_collate, stack_collate):
        return "the task collates its batches in its own way"
    return None


def fits(count: int, channels: int, size: int) -> bool:
    """Whether ``count`` uint8 images of ``size`` px fit ``data.in_memory=auto``'s limit."""
    needed = count * channels * size * size
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        total = 4 * AUTO_LIMIT_BYTES
    return needed <= min(AUTO_LIMIT_BYTES, total // 4)


# --- decoding once -----------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """A split held in memory: uint8 images (N, C, R, R) and one int64 tensor per target key."""

    images: Tensor
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.images)


def square(image: Tensor, size: int) -> Tensor:
    """A uint8 image (C, H, W), or a batch of them, with its shorter side at ``size`` and centre-cropped
    square (uint8)."""
    if image.dtype != torch.uint8:
        raise NotInMemory(f"its images are {image.dtype}, and the in-memory path holds 8-bit images")
    if image.shape[-2:] == (size, size):
        return image
    return F.center_crop(shorter_side(image, size), [size, size])


def shorter_side(image: Tensor, size: int) -> Tensor:
    """A uint8 image (C, H, W), or a batch of them, with its shorter side resized to ``size`` (uint8)."""
    if min(image.shape[-2:]) == size:
        return image
    # resized as Evaluate does (in float, with antialiasing), then rounded back to 8 bits
    scaled = F.resize(F.to_dtype(image, torch.float32, scale=True), [size], antialias=True)
    return scaled.clamp(0, 1).mul(255).round().to(torch.uint8)


def sources(dataset: Dataset) -> list[tuple[Dataset, list[int]]]:
    """The base datasets behind (nested) subsets and concatenations, with the indices taken of each."""
    if isinstance(dataset, Subset):
        return [(base, [idx[i] for i in dataset.indices]) for base, idx in sources(dataset.dataset)]
    if isinstance(dataset, ConcatDataset):
        return [part for inner in dataset.datasets for part in sources(inner)]
    return [(dataset, list(range(len(dataset))))]  # type: ignore[arg-type]


def decode_base(
    base: Dataset, size: int, keys: tuple[str, ...], num_workers: int, cache_dir: Path | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Every image of ``base`` at ``size`` px in one uint8 tensor, with the target ``keys`` of every item;
    files decoded once and cached on disk."""
    images, labels = getattr(base, "images", None), getattr(base, "labels", None)
    if (
        isinstance(images, Tensor)
        and images.dtype == torch.uint8
        and images.dim() == 4
        and set(keys) <= {"label"}
    ):
        targets = {"label": torch.as_tensor(labels, dtype=torch.long)} if keys else {}
        if images.shape[-2:] == (size, size):
            return images, targets
        # a resize call per chunk rather than per image (digits: 0.10 s -> 0.003 s), each image resized on
        # its own all the same; chunks bound the float copy
        return torch.cat([square(chunk, size) for chunk in images.split(1024)]), targets
    cache = cache_file(cache_dir, "decoded", base, size, list(keys), suffix=".pt") if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            stored = torch.load(cache, weights_only=True)
            return stored["images"], stored["targets"]
        except (OSError, RuntimeError, EOFError, KeyError) as err:
            log.warning("data: the decoded cache %s is unreadable (%s); decoding again", cache, err)
    items = list(decode_pass(_Squared(base, size, keys), num_workers))
    decoded = torch.stack([image for image, _ in items]) if items else torch.empty(0, dtype=torch.uint8)
    targets = {k: torch.tensor([target[k] for _, target in items], dtype=torch.long) for k in keys}
    if cache is not None:
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"images": decoded, "targets": targets}, tmp)
            tmp.replace(cache)  # atomic: DDP ranks may decode at the same time
        except OSError as err:
            log.warning("data: could not cache the decoded images in %s (%s)", cache, err)
        else:
            drop_stale(cache)
    return decoded, targets


class _Squared(Dataset):
    """The images of ``base`` at ``size`` px (uint8) with their targets ``keys``: what the decoding pass
    reads, in workers if any. What cannot be held comes back as its reason."""

    def __init__(self, base: Dataset, size: int, keys: tuple[str, ...]) -> None:
        self.base, self.size, self.keys = base, size, keys

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, int]] | str:
        image, target = self.base[index]
        target = as_target(target)
        missing = [k for k in self.keys if k not in target]
        if missing:
            return f"its items carry no {', '.join(missing)}"
        try:
            return square(as_image(image).as_subclass(Tensor), self.size), {
                k: int(target[k]) for k in self.keys
            }
        except NotInMemory as err:  # said in the main process: a worker's exception comes back wrapped
            return str(err)


@contextlib.contextmanager
def worker_batches(loader: DataLoader) -> Iterator[Iterator[Any]]:
    """The batches of ``loader``, its workers stopped when the block ends, by an error too.

    A worker's error leaves torch's iterator in a reference cycle (the frames that re-raise it), so it is
    not freed with the traceback: the garbage collector frees it later, and its workers then each wait out
    a 5 s timeout before they stop (10 s with two). Lightning stops its loaders' workers the same way.
    """
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # none without workers
        if shutdown is not None:
            shutdown()


def decode_pass(items: Dataset, num_workers: int) -> Iterator[Any]:
    """The items of ``items`` in order, read in ``num_workers`` DataLoader workers; an item that is a string
    (why the data cannot be decoded ahead) stops the pass with ``NotInMemory``."""
    # batches small enough that every worker gets some: one batch of a small dataset would be one worker's
    batch = max(1, min(256, math.ceil(len(items) / max(1, 4 * num_workers))))  # type: ignore[arg-type]
    loader = DataLoader(items, batch_size=batch, num_workers=num_workers, collate_fn=list)
    with worker_batches(loader) as chunks:
        for chunk in chunks:
            for item in chunk:
                if isinstance(item, str):
                    raise NotInMemory(item)
                yield item


def files_of(base: Dataset) -> list[tuple[Path, ...]]:
    """The files each item of ``base`` is read from (its image first, then a mask, say): the paths in its
    ``samples``; none when it is not read from files."""
    return [
        tuple(Path(part) for part in sample if isinstance(part, (str, os.PathLike)))
        for sample in getattr(base, "samples", None) or []
    ]


def cache_file(cache_dir: Path, kind: str, base: Dataset, size: int, *parts: Any, suffix: str) -> Path | None:
    """Where the ``kind`` cache of ``base`` at ``size`` px lives: ``.cnnlab_<kind>_<size>px_<which>_<state>``
    and ``suffix``, ``which`` naming its files (paths), how they are read and ``parts``, ``state`` the files'
    sizes and times; None when it is not read from files. A changed file: the same ``which``, a new state."""
    files = files_of(base)
    if not files:
        return None
    paths, stamps = [], []
    for path in (path for paths in files for path in paths):
        stat = os.stat(path)
        paths.append(str(path))
        # the change time too: a file rewritten with its size and modification time put back is still seen
        stamps.append((stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
    # what else changes the items read from the same files: the channels, a dataset's own reading options
    reading = [getattr(base, "channels", ""), getattr(base, "read_options", None)]
    which = hashlib.sha1(json.dumps([*parts, *reading, paths]).encode()).hexdigest()[:12]
    state = hashlib.sha1(json.dumps(stamps).encode()).hexdigest()[:12]
    return cache_dir / f".cnnlab_{kind}_{size}px_{which}_{state}{suffix}"


def drop_stale(cache: Path) -> None:
    """Delete the caches of the same files that ``cache`` replaces (their state is older): a changed photo
    would otherwise leave a whole dataset's decoded copy behind. Caches at other sizes stay."""
    stem = cache.name[: cache.name.rindex("_") + 1]
    for old in cache.parent.glob(f"{stem}*"):
        if old.name != cache.name and old.suffix == cache.suffix:
            try:
                old.unlink(missing_ok=True)  # another process (a DDP rank) may have removed it first
                log.info("data: removed %s, a decoded cache of files that changed since", old)
            except OSError as err:  # only disk space: the run goes on
                log.warning("data: could not remove the stale cache %s (%s)", old, err)


def decode_split(
    split: Dataset,
    size: int,
    keys: tuple[str, ...],
    normal_classes: list[int] | None,
    num_workers: int = 0,
    cache_dir: Path | None = None,
    decoded: dict[int, tuple[Tensor, dict[str, Tensor]]] | None = None,
) -> Decoded:
    """``split`` in memory at ``size`` px with the target ``keys`` (``anomaly`` from ``normal_classes``, as
    ``SampleDataset`` sets it, when they are given).

    ``decoded`` holds the base datasets already decoded (by id): splits carved from one pool decode it once.
    """
    decoded = {} if decoded is None else decoded
    read = tuple(k for k in keys if not (k == "anomaly" and normal_classes is not None))
    if normal_classes is not None and "label" not in read:
        read += ("label",)
    images, targets = [], {k: [] for k in read}
    for base, indices in sources(split):
        if id(base) not in decoded:
            decoded[id(base)] = decode_base(base, size, read, num_workers, cache_dir)
        index = torch.tensor(indices, dtype=torch.long)
        images.append(decoded[id(base)][0][index])
        for key in read:
            targets[key].append(decoded[id(base)][1][key][index])
    joined = {k: torch.cat(v) for k, v in targets.items()}
    if normal_classes is not None:
        normal = torch.tensor(normal_classes, dtype=torch.long)
        joined["anomaly"] = (~torch.isin(joined["label"], normal)).long()
    return Decoded(torch.cat(images), {k: joined[k] for k in keys if k in joined})


# --- batched augmentation ----------------------------------------------------------------------------------


def crop_batch(images: Tensor, tops: Tensor, lefts: Tensor, size: int) -> Tensor:
    """A ``size`` px square of each image (N, C, H, W), at its own top-left corner."""
    n, c = images.shape[:2]
    steps = torch.arange(size, device=images.device)
    rows = (tops[:, None] + steps)[:, None, :, None]
    cols = (lefts[:, None] + steps)[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return images[batch, channel, rows, cols]


def flip_batch(images: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each image mirrored left-right with probability ``p``."""
    if p <= 0:
        return images
    flipped = torch.rand(len(images), generator=generator, device=images.device) < p
    return torch.where(flipped[:, None, None, None], images.flip(-1), images)


def basic_batch(
    images: Tensor, generator: torch.Generator, image_size: int, hflip: float = 0.5, padding: int = 4
) -> Tensor:
    """``transforms.basic`` on a uint8 batch: a random crop (zero-padded when the images are already at
    ``image_size``) and a horizontal flip."""
    n, _, h, _ = images.shape
    pad = padding if h == image_size else 0
    if pad:
        images = torch.nn.functional.pad(images, [pad] * 4)
    room = h + 2 * pad - image_size + 1
    tops = torch.randint(0, room, (n,), generator=generator, device=images.device)
    lefts = torch.randint(0, room, (n,), generator=generator, device=images.device)
    return flip_batch(crop_batch(images, tops, lefts, image_size), hflip, generator)


def resized_crop_boxes(
    n: int, size: int, scale: tuple[float, float], generator: torch.Generator, device: torch.device
) -> Tensor:
    """RandomResizedCrop's boxes (x1, y1, x2, y2) for ``n`` square images of ``size`` px: an area share in
    ``scale`` and an aspect ratio in [3/4, 4/3] (log-uniform), ten tries each, else the whole image."""
    tries = 10
    area = size * size * torch.empty(n, tries, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, tries, device=device).uniform_(
        math.log(3 / 4), math.log(4 / 3), generator=generator
    )
    ratio = log_ratio.exp()
    widths = (area * ratio).sqrt().round()
    heights = (area / ratio).sqrt().round()
    ok = (widths > 0) & (widths <= size) & (heights > 0) & (heights <= size)
    first = ok.float().argmax(dim=1)  # the first try that fits
    found = ok.any(dim=1)
    pick = torch.arange(n, device=device)
    w = torch.where(found, widths[pick, first], torch.full_like(first, size, dtype=widths.dtype))
    h = torch.where(found, heights[pick, first], torch.full_like(first, size, dtype=widths.dtype))
    top = (torch.rand(n, generator=generator, device=device) * (size - h + 1)).floor()
    left = (torch.rand(n, generator=generator, device=device) * (size - w + 1)).floor()
    return torch.stack([left, top, left + w, top + h], dim=1)


def jitter_batch(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s] per image (float
    images in [0, 1]), in that order."""
    if strength <= 0:
        return images
    n = len(images)

    def factors() -> Tensor:
        low = max(0.0, 1 - strength)
        return torch.empty(n, 1, 1, 1, device=images.device).uniform_(low, 1 + strength, generator=generator)

    images = (images * factors()).clamp(0, 1)
    grey = F.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    c = factors()
    images = (c * images + (1 - c) * mean).clamp(0, 1)
    if images.shape[1] == 3:
        s = factors()
        images = (s * images + (1 - s) * F.rgb_to_grayscale(images)).clamp(0, 1)
    return images


def standard_batch(
    images: Tensor,
    generator: torch.Generator,
    image_size: int,
    scale: tuple[float, float] = (0.35, 1.0),
    hflip: float = 0.5,
    jitter: float = 0.2,
) -> Tensor:
    """``transforms.standard`` on a uint8 batch: a random resized crop of each image (bilinear, through
    ``roi_align``), a horizontal flip and colour jitter; float in [0, 1]."""
    n, _, size, _ = images.shape
    boxes = resized_crop_boxes(n, size, tuple(scale), generator, images.device)
    rois = torch.cat([torch.arange(n, device=images.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    floats = images.float().div_(255)
    crops = roi_align(floats, rois, output_size=image_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return jitter_batch(flip_batch(crops, hflip, generator), jitter, generator)


#: the presets this path runs as whole batches; any other runs its own v2 steps image by image
BATCHED: dict[Callable[..., Any], Callable[..., Tensor]] = {T.basic: basic_batch, T.standard: standard_batch}


class BatchTransform:
    """uint8 batches (N, C, R, R) to what the network takes: augmented (training), cropped, scaled to [0, 1]
    and normalised, as the per-sample transforms of the same settings do."""

    def __init__(
        self,
        augmentation: Callable[..., Any],
        image_size: int,
        resize_size: int,
        mean: list[float] | None,
        std: list[float] | None,
        geometry: str,
        train: bool,
    ) -> None:
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.evaluate = T.Evaluate(geometry, image_size, resize_size, mean, std)
        preset = augmentation.func if isinstance(augmentation, functools.partial) else augmentation
        options = dict(augmentation.keywords) if isinstance(augmentation, functools.partial) else {}
        steps = augmentation(image_size=image_size, resize_size=resize_size) if train else []
        self.batched: Callable[..., Tensor] | None = None
        self.per_image: Callable[..., Any] | None = None
        if steps and preset in BATCHED:
            self.batched = functools.partial(BATCHED[preset], image_size=image_size, **options)
        elif steps:
            self.per_image = T.train_transform(augmentation, image_size, resize_size, mean, std, geometry)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.per_image is not None:
            return torch.stack([self.per_image(image).as_subclass(Tensor) for image in images.cpu()]).to(
                images.device
            )
        if self.batched is None:
            return self.evaluate.transform(images, {})
        out = self.batched(images, generator)
        if out.dtype == torch.uint8:
            out = out.float().div_(255)
        return F.normalize(out, self.mean, self.std) if self.mean else out


class MemoryLoader:
    """Batches of a ``Decoded`` split, drawn on the training device: what a DataLoader would serve.

    ``sampler`` (an ``EpochSampler``) orders the training split; Lightning calls its ``set_epoch``. With
    several processes (DDP) each takes every ``world_size``-th image of that order, padded with its first
    images to a length that divides, so that every process takes the same share.
    """

    #: what Lightning looks for on a loader (there is no batch sampler: batches are slices of the order)
    batch_sampler = None

    def __init__(
        self,
        data: Decoded,
        batch_size: int,
        transform: BatchTransform,
        collate: Callable[..., Any],
        device: Callable[[], torch.device],
        sampler: Any = None,
        drop_last: bool = False,
        shard: Callable[[], tuple[int, int]] = lambda: (0, 1),
    ) -> None:
        self.data, self.batch_size, self.transform = data, batch_size, transform
        self.collate, self.device, self.sampler, self.drop_last = collate, device, sampler, drop_last
        self.shard = shard
        self._placed: tuple[torch.device, Tensor, dict[str, Tensor]] | None = None

    def _count(self) -> int:
        # the same share in every process, as DistributedSampler gives (the first images of the order fill
        # the last places): a DDP run's processes must take the same steps, each step's gradients being
        # averaged across them
        _, world = self.shard()
        return math.ceil(len(self.data) / world)

    def __len__(self) -> int:
        n = self._count()
        # drop_last drops a partial last batch only where this process's share holds a whole one: a share
        # smaller than a batch (a small set on many GPUs) still trains, on one smaller batch
        whole = self.drop_last and n > self.batch_size
        return n // self.batch_size if whole else math.ceil(n / self.batch_size)

    def _on_device(self) -> tuple[Tensor, dict[str, Tensor]]:
        device = self.device()
        if self._placed is None or self._placed[0] != device:
            images = self.data.images.to(device)
            self._placed = (device, images, {k: v.to(device) for k, v in self.data.targets.items()})
        return self._placed[1], self._placed[2]

    def __iter__(self) -> Iterator[Any]:
        images, targets = self._on_device()
        device = images.device
        epoch = getattr(self.sampler, "epoch", 0)
        seed = getattr(self.sampler, "seed", 0)
        order = (
            torch.tensor(list(self.sampler), dtype=torch.long)
            if self.sampler is not None
            else torch.arange(len(self.data))
        )
        rank, world = self.shard()
        # repeated, not just extended: a set smaller than the processes' count still fills every share
        padded = order.repeat(math.ceil(self._count() * world / max(1, len(order))))[: self._count() * world]
        order = padded[rank::world].to(device)
        generator = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch + 7)
        for i in range(len(self)):
            pick = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = self.transform(images[pick], generator)
            picked = {k: v[pick] for k, v in targets.items()}
            yield (batch, picked["label"]) if self.collate is label_collate else (batch, picked)
