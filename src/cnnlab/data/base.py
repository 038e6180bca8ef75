"""The base of every datamodule: splits, statistics, transforms and loaders, for any task.

A subclass says where its samples come from (``load_split``), which target keys they carry (``targets``) and,
when it downloads, how (``download``). The task says what it needs of them in its ``SampleSpec`` (given as
``spec``): the keys, the evaluation geometry, normalisation and the collate function. The base carves a
seeded validation split from the training pool, computes normalisation statistics on the training split
when the config gives none, builds the joint transforms and serves the loaders: from memory when the data
fits (``cnnlab.data.memory``), else DataLoaders over the files, decoded once when that pays
(``cnnlab.data.resized``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from cnnlab.data import memory, resized
from cnnlab.data import transforms as T
from cnnlab.errors import ClassCountError
from cnnlab.samples import SampleDataset, SampleSpec, as_image, label_collate

log = logging.getLogger(__name__)

#: what a datamodule serves when no task says otherwise: images with their class labels
LABELLED = SampleSpec(needs=("label",), collate=label_collate)


class TensorImages(Dataset):
    """(image, label) items of a uint8 image tensor (N, C, H, W) and a label tensor (N,), kept in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def labels_of(dataset: Dataset) -> list[int]:
    """The class label of every item, read from the dataset's ``labels`` without loading images."""
    if isinstance(dataset, Subset):
        labels = labels_of(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    found = getattr(dataset, "labels", None)
    if found is not None:
        return [int(v) for v in found]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


class EpochSampler(Sampler[int]):
    """A random order fixed by (seed, epoch), so a resumed run sees the batches an uninterrupted one would.

    It also reseeds ``loader_generator``, from which the DataLoader draws its workers' seeds, so that random
    augmentation in workers follows (seed, epoch) too and never draws from the global RNG.
    """

    def __init__(self, length: int, seed: int, loader_generator: torch.Generator | None = None) -> None:
        self.length, self.seed, self.epoch = length, seed, 0
        self.loader_generator = loader_generator

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(self.seed * 100_003 + epoch + 1)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def as_spec(fields: Any) -> SampleSpec:
    """A ``SampleSpec`` from a mapping of its fields (the config ``instantiate`` makes of one)."""
    known = {f.name for f in dataclasses.fields(SampleSpec)}
    given = dict(fields.items())
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(
            f"spec: {', '.join(unknown)} are no fields of a SampleSpec ({', '.join(sorted(known))})"
        )
    for key in ("needs", "wants"):
        if key in given:
            given[key] = tuple(given[key])
    return SampleSpec(**given)


class ImageDataModule(L.LightningDataModule):
    """Shared behaviour of the datamodules; subclasses implement ``load_split``."""

    #: the target keys this dataset's samples carry (see ``cnnlab.samples``)
    targets: ClassVar[tuple[str, ...]] = ("label",)

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        resize_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        root: str | os.PathLike | None = None,
        batch_size: int = 64,
        num_workers: int | str = "auto",
        in_memory: bool | str = "auto",
        decoded_cache: bool | str = "auto",
        val_fraction: float = 0.1,
        seed: int = 0,
        augmentation: T.AugmentationFactory | None = None,
        normal_classes: Sequence[int] | None = None,
        val_anomalies: float = 0.0,
        pin_memory: bool = False,
        spec: SampleSpec = LABELLED,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must lie strictly between 0 and 1, got {val_fraction}")
        if (mean is None) != (std is None):
            raise ValueError("data.mean and data.std go together: set both or neither")
        self.root = Path(root).expanduser() if root is not None else None
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.resize_size = int(resize_size or image_size)
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.batch_size, self.num_workers, self.pin_memory = (
            batch_size,
            loader_workers(num_workers),
            pin_memory,
        )
        self.in_memory = memory.choice(in_memory)
        #: the splits decoded into memory (``cnnlab.data.memory``), or None: served by DataLoaders
        self.memory: dict[str, memory.Decoded] | None = None
        self.decoded_cache = resized.choice(decoded_cache)
        #: the splits the loaders serve: the raw ones, their photos read from the decoded cache when it is on
        self._served: dict[str, Dataset] = {}
        self.val_fraction, self.seed = val_fraction, seed
        self.augmentation = augmentation or T.none
        # hydra.utils.instantiate(cfg.data, spec=task.samples) hands the spec over as a config (a mapping of
        # its fields), whose keys() are the field names: taken back as the task's spec
        self.spec = spec if isinstance(spec, SampleSpec) else as_spec(spec)
        self.normal_classes = self._check_normal_classes(normal_classes)
        if not 0.0 <= val_anomalies < 1.0 or (val_anomalies and normal_classes is None):
            raise ValueError(
                f"data.val_anomalies={val_anomalies}: give the share of validation images taken from the "
                "classes outside data.normal_classes, from 0 (none) to below 1; it needs data.normal_classes"
            )
        self.val_anomalies = float(val_anomalies)
        self.class_names: list[str] = [str(i) for i in range(self.num_classes)]
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._raw: dict[str, Dataset] = {}

    @classmethod
    def provides(cls, normal_classes: Sequence[int] | None = None) -> tuple[str, ...]:
        """The target keys samples carry; labelled data with ``normal_classes`` also flags anomalies."""
        extra = ("anomaly",) if normal_classes is not None and "label" in cls.targets else ()
        return cls.targets + tuple(k for k in extra if k not in cls.targets)

    # --- what a subclass provides ------------------------------------------------------------------------

    def download(self) -> None:
        """Fetch the dataset when it is not on disk yet (called once, on the main process)."""

    def load_split(self, split: str) -> Dataset:
        """The raw (image, target) items of ``split`` ("train" or "test"); images as PIL or tensors."""
        raise NotImplementedError

    def stats_cache(self) -> Path | None:
        """Where computed normalisation statistics are cached, or None to compute them every run."""
        return None

    def stats_fingerprint(self, train: Dataset) -> str:
        """What identifies the training images in the statistics cache (a subclass names its files)."""
        return str(len(train))  # type: ignore[arg-type]

    def own_validation(self) -> Dataset | None:
        """A validation split the dataset ships with (used instead of one carved from the training pool)."""
        return None

    def cache_dir(self) -> Path | None:
        """The folder beside the files that holds the decoded cache; None for data not read from files."""
        return None

    # --- Lightning hooks ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.download()

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        raw = dict(zip(("train", "val", "test"), self._raw_splits(), strict=True))
        self.memory = self._decode_in_memory(raw)
        self._served = raw if self.memory is not None else self._decoded(raw)
        train_raw, val_raw, test_raw = self._served["train"], self._served["val"], self._served["test"]
        mean, std = self.statistics() if self.spec.normalize else (None, None)
        geometry = self.spec.eval_geometry
        train_tf = T.train_transform(
            self.augmentation, self.image_size, self.resize_size, mean, std, geometry
        )
        eval_tf = T.eval_transform(self.image_size, self.resize_size, mean, std, geometry)
        keys = self.spec.keys()
        self.train_set = SampleDataset(train_raw, train_tf, keys, self.normal_classes)
        self.val_set = SampleDataset(val_raw, eval_tf, keys, self.normal_classes)
        self.test_set = SampleDataset(test_raw, eval_tf, keys, self.normal_classes)
        log.info(
            "data: %d train, %d val, %d test images, %d classes%s",
            len(train_raw),
            len(val_raw),
            len(test_raw),
            self.num_classes,
            f"; normal classes {self.normal_classes} (train and val hold only those)"
            if self.normal_classes is not None
            else "",
        )

    def statistics(self) -> tuple[list[float], list[float]]:
        """The normalisation mean and std: the config's, or computed on the training split (then cached)."""
        if self.mean is None or self.std is None:
            train = self._served["train"] if self._served else self._raw_splits()[0]
            self.mean, self.std = self._statistics(train)
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.in_channels:
                raise ValueError(
                    f"data.{name} has {len(values)} values but the images have {self.in_channels} channels"
                )
        return self.mean, self.std

    def train_dataloader(self) -> DataLoader | memory.MemoryLoader:
        assert self.train_set is not None, "call setup() first"
        n = len(self.train_set)  # type: ignore[arg-type]
        if self.memory is not None:
            return self._memory_loader("train")
        # a last batch of one would break batch norm; with a shuffled order no image is lost for good. Each
        # process of a DDP run reads its share of the set: dropping the last batch of a share smaller than a
        # batch would leave the process nothing to train on
        generator = torch.Generator()
        return self._loader(
            self.train_set,
            sampler=EpochSampler(n, self.seed, loader_generator=generator),
            generator=generator,
            drop_last=math.ceil(n / self._shard()[1]) > self.batch_size,
        )

    def val_dataloader(self) -> DataLoader | memory.MemoryLoader:
        return self._memory_loader("val") if self.memory is not None else self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader | memory.MemoryLoader:
        return self._memory_loader("test") if self.memory is not None else self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader | memory.MemoryLoader:
        return self.test_dataloader()

    def sample_images(self, count: int = 4) -> list[torch.Tensor]:
        """The first ``count`` validation images as the files hold them (C, H, W), before any transform:
        what an export is verified on."""
        _, val, _ = self._raw_splits()
        return [as_image(val[i][0]).as_subclass(torch.Tensor) for i in range(min(count, len(val)))]

    # --- the contract exported models carry --------------------------------------------------------------

    def contract(self) -> dict[str, Any]:
        """Everything a model needs to preprocess and label images without the training code."""
        normalized = self.spec.normalize and self.mean is not None
        return {
            "class_names": list(self.class_names),
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "geometry": self.spec.eval_geometry,
            "mean": [float(v) for v in self.mean or []] if normalized else [],
            "std": [float(v) for v in self.std or []] if normalized else [],
        }

    # --- helpers -----------------------------------------------------------------------------------------

    def _set_class_names(self, names: Sequence[str]) -> None:
        if len(names) != self.num_classes:
            raise ClassCountError(
                f"the dataset has {len(names)} classes but data.num_classes={self.num_classes}; "
                f"set data.num_classes={len(names)}",
                list(names),
            )
        self.class_names = list(names)

    def _check_normal_classes(self, normal_classes: Sequence[int] | None) -> list[int] | None:
        if normal_classes is None:
            return None
        picked = [int(c) for c in normal_classes]
        if "label" not in self.targets:
            raise ValueError(
                f"data.normal_classes={picked}: {type(self).__name__} has no class labels to pick normal "
                "images by; leave it null"
            )
        if not picked or len(set(picked)) != len(picked) or not set(picked) <= set(range(self.num_classes)):
            raise ValueError(
                f"data.normal_classes={picked}: give distinct class indices from 0 to {self.num_classes - 1} "
                "(the classes that count as normal; every other class is an anomaly at test time)"
            )
        return picked

    def _raw_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """The raw train, validation and test items (cached): normal images only in train and val."""
        if not self._raw:
            pool, test, val = self.load_split("train"), self.load_split("test"), self.own_validation()
            others: Dataset | None = None
            if self.normal_classes is not None:
                normal = set(self.normal_classes)
                labels = labels_of(pool)
                others = Subset(pool, [i for i, y in enumerate(labels) if y not in normal])
                pool = Subset(pool, [i for i, y in enumerate(labels) if y in normal])
                if val is not None:
                    val = Subset(val, [i for i, y in enumerate(labels_of(val)) if y in normal])
            train, val = (pool, val) if val is not None else self._split(pool)
            if self.val_anomalies and others is not None:
                # images of the other classes join validation (never training): AUROC can pick checkpoints
                n = round(len(val) * self.val_anomalies / (1 - self.val_anomalies))
                order = torch.randperm(len(others), generator=torch.Generator().manual_seed(self.seed))
                val = ConcatDataset([val, Subset(others, order[:n].tolist())])
            self._raw = {"train": train, "val": val, "test": test}
        return self._raw["train"], self._raw["val"], self._raw["test"]

    def _loader(self, dataset: Dataset | None, **kwargs: Any) -> DataLoader:
        assert dataset is not None, "call setup() first"
        # a generator of its own: creating an iterator then draws nothing from the global RNG
        kwargs.setdefault("generator", torch.Generator())
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory or self._device().type == "cuda",
            collate_fn=self.spec.collate,
            worker_init_fn=one_thread_worker if self.num_workers > 0 else None,
            **kwargs,
        )

    # --- the in-memory path ------------------------------------------------------------------------------

    def _decode_in_memory(self, splits: dict[str, Dataset]) -> dict[str, memory.Decoded] | None:
        """The splits decoded into memory when ``in_memory`` asks for it (or, with auto, they fit)."""
        if self.in_memory == "false":
            return None
        # what the samples carry (not only what tasks may use them for: MVTec's test images carry masks)
        carried = tuple(self.targets) + (("anomaly",) if self.normal_classes is not None else ())
        used = tuple(k for k in self.spec.keys() if k in carried)
        why = memory.eligible(used, self.spec.collate)
        if why is None and self.spec.eval_geometry != "crop":
            why = f"the task shapes evaluation images by {self.spec.eval_geometry!r}, not by a square crop"
        count = sum(len(split) for split in splits.values())  # type: ignore[arg-type]
        if (
            why is None
            and self.in_memory == "auto"
            and not memory.fits(count, self.in_channels, self.resize_size)
        ):
            why = f"{count} images of {self.resize_size} px exceed what data.in_memory=auto holds"
        decoded: dict[str, memory.Decoded] | None = None
        if why is None:
            cache = self.stats_cache()
            started, seen = time.perf_counter(), {}
            try:
                decoded = {
                    name: memory.decode_split(
                        split,
                        self.resize_size,
                        used,
                        self.normal_classes,
                        self.num_workers,
                        cache.parent if cache is not None else None,
                        seen,
                    )
                    for name, split in splits.items()
                }
            except memory.NotInMemory as err:
                why = str(err)
        if why is not None:
            if self.in_memory == "true":
                raise ValueError(f"data.in_memory=true cannot hold this data: {why}; set data.in_memory=auto")
            log.info("data: served by DataLoaders (%s)", why)
            return None
        size = sum(d.images.numel() for d in decoded.values()) / 1e6  # type: ignore[union-attr]
        log.info(
            "data: %d images held in memory at %d px (%.0f MB, %.1f s); batches are drawn and augmented on "
            "the training device",
            count,
            self.resize_size,
            size,
            time.perf_counter() - started,
        )
        return decoded

    def _decoded(self, splits: dict[str, Dataset]) -> dict[str, Dataset]:
        """The splits of the DataLoader path, their photos decoded once at the training size when
        ``decoded_cache`` asks for it (``cnnlab.data.resized``): the shorter side at ``resize_size`` before
        a centre crop (``crop``), at ``image_size`` where evaluation resizes to it (``resize``,
        segmentation)."""
        geometry = self.spec.eval_geometry
        return resized.serve(
            splits,
            self.decoded_cache,
            self.image_size if geometry == "resize" else self.resize_size,
            geometry,
            self.cache_dir(),
            self.num_workers,
        )

    def _memory_loader(self, split: str) -> memory.MemoryLoader:
        assert self.memory is not None
        data, train = self.memory[split], split == "train"
        keys = tuple(k for k in self.spec.keys() if k in data.targets)
        mean, std = (self.mean, self.std) if self.spec.normalize else (None, None)
        transform = memory.BatchTransform(
            self.augmentation if train else T.none,
            self.image_size,
            self.resize_size,
            mean,
            std,
            self.spec.eval_geometry,
            train,
        )
        return memory.MemoryLoader(
            memory.Decoded(data.images, {k: data.targets[k] for k in keys}),
            self.batch_size,
            transform,
            self.spec.collate,
            device=self._device,
            sampler=EpochSampler(len(data), self.seed) if train else None,
            drop_last=train,  # where a process's share holds more than a batch (MemoryLoader)
            shard=self._shard if train else lambda: (0, 1),
        )

    def _device(self) -> torch.device:
        """The device the run trains on (the CPU before a Trainer is attached)."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _shard(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _split(self, pool: Dataset) -> tuple[Subset, Subset]:
        n = len(pool)  # type: ignore[arg-type]
        n_val = max(1, int(round(n * self.val_fraction)))
        if n - n_val < 1:
            raise ValueError(
                f"{n} training images are too few to carve a validation split of {self.val_fraction:.0%}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return Subset(pool, order[n_val:]), Subset(pool, order[:n_val])

    def _statistics(self, train: Dataset) -> tuple[list[float], list[float]]:
        cache = self.stats_cache()
        geometry = f"{self.spec.eval_geometry}/{self.image_size}/{self.resize_size}"
        files = self.stats_fingerprint(train)
        key = f"{self.in_channels}ch/{geometry}/{self.seed}/{self.val_fraction}/{files}"
        entries = _read_json(cache) if cache is not None else {}
        if key in entries:
            mean, std = entries[key]["mean"], entries[key]["std"]
            log.info("data: mean %s, std %s read from %s (same training files)", _fmt(mean), _fmt(std), cache)
            return mean, std
        if self.memory is not None:
            mean, std = memory_statistics(self.memory["train"].images, self.image_size)
        else:
            mean, std = channel_statistics(
                train, self.image_size, self.resize_size, self.num_workers, self.spec.eval_geometry
            )
        log.info("data: mean %s, std %s computed on the training split", _fmt(mean), _fmt(std))
        if cache is not None:
            entries[key] = {"mean": mean, "std": std}
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            try:
                tmp.write_text(json.dumps(entries, indent=2))
                tmp.replace(cache)  # atomic: DDP ranks may compute it at the same time
            except OSError as err:  # a read-only dataset folder must not stop a run
                log.warning("data: could not cache the statistics in %s (%s)", cache, err)
        return mean, std


def channel_statistics(
    dataset: Dataset, image_size: int, resize_size: int, num_workers: int = 0, geometry: str = "crop"
) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of a dataset's images in [0, 1], as evaluation shapes them.

    Images may differ in size (``geometry`` "resize" or "none"): each adds its own pixels to the sums.
    """
    prep = T.eval_transform(image_size, resize_size, mean=None, std=None, geometry=geometry)
    samples = SampleDataset(dataset, prep, keys=())
    loader = DataLoader(samples, batch_size=64, num_workers=num_workers, collate_fn=list)
    total, total_sq, count = None, None, 0
    with memory.worker_batches(loader) as batches:
        for batch in batches:
            for image, _ in batch:
                flat = image.as_subclass(torch.Tensor).double().flatten(1)  # (C, H*W)
                total = flat.sum(1) if total is None else total + flat.sum(1)
                total_sq = (flat**2).sum(1) if total_sq is None else total_sq + (flat**2).sum(1)
                count += flat.shape[1]
    if total is None or total_sq is None:
        raise ValueError("cannot compute normalisation statistics: the training split is empty")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def memory_statistics(images: Tensor, image_size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, R, R) centre-cropped to ``image_size``, in [0, 1]."""
    offset = (images.shape[-1] - image_size) // 2
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in images.split(1024):
        flat = chunk[..., offset : offset + image_size, offset : offset + image_size].transpose(0, 1)
        flat = flat.reshape(images.shape[1], -1).double().div_(255)
        total += flat.sum(1)
        total_sq += (flat**2).sum(1)
    count = max(1, len(images) * image_size * image_size)
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def loader_workers(value: int | str) -> int:
    """``data.num_workers``: a number, or auto (the cores this process may use, minus one for training)."""
    if str(value).lower() == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(0, cores - 1)
    if isinstance(value, bool) or not str(value).isdigit():
        raise ValueError(f"data.num_workers={value}: give a number of DataLoader workers (0: none) or auto")
    return int(value)


def one_thread_worker(worker_id: int) -> None:
    """A DataLoader worker computes with one thread: several workers with torch's own threads each would
    oversubscribe the cores. Seeds it as Lightning does when the run seeds its workers."""
    torch.set_num_threads(1)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def _read_json(path: Path) -> dict[str, Any]:
    """The cached entries, or none when the file is missing or unreadable (it is only a cache)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
