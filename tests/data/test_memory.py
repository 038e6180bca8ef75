"""The in-memory path: decoded once, batches drawn and augmented whole, in the order (seed, epoch) fixes."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakedata import write_image_folder
from PIL import Image

from cnnlab.data import memory
from cnnlab.data import transforms as T
from cnnlab.data.base import loader_workers
from cnnlab.data.digits import DigitsDataModule
from cnnlab.data.image_folder import ImageFolderDataModule
from cnnlab.samples import SampleSpec, pad_collate, stack_collate


def digits(**kwargs: object) -> DigitsDataModule:
    dm = DigitsDataModule(image_size=16, batch_size=32, seed=3, **kwargs)  # type: ignore[arg-type]
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_small_data_is_held_in_memory_and_evaluates_as_the_dataloader_does() -> None:
    fast, slow = digits(), digits(in_memory="false")
    assert isinstance(fast.train_dataloader(), memory.MemoryLoader) and fast.memory is not None
    assert slow.memory is None and isinstance(slow.train_dataloader(), torch.utils.data.DataLoader)
    assert fast.memory["train"].images.dtype == torch.uint8
    assert fast.memory["train"].images.shape == (len(fast.train_set), 1, 16, 16)
    # the statistics come from the decoded tensor: the same as from the files, up to 8-bit rounding
    torch.testing.assert_close(torch.tensor(fast.mean), torch.tensor(slow.mean), atol=2e-3, rtol=0)
    fast.mean, fast.std = slow.mean, slow.std  # one normalisation, to compare the images themselves
    for mine, theirs in zip(fast.val_dataloader(), slow.val_dataloader(), strict=True):
        assert mine[0].shape == theirs[0].shape and mine[0].dtype == torch.float32
        assert torch.equal(mine[1], theirs[1])
        # stored at 16 px in 8 bits: within half a grey level of the per-sample float path
        assert (mine[0] - theirs[0]).abs().max() <= 0.5 / 255 / min(slow.std) + 1e-5
    assert len(fast.train_dataloader()) == len(slow.train_dataloader())
    assert len(fast.test_dataloader()) == len(slow.test_dataloader())


def test_a_set_of_tensors_is_resized_in_chunks_as_each_image_alone() -> None:
    images = torch.randint(0, 256, (1100, 3, 30, 40), dtype=torch.uint8)  # more than one chunk

    class Tensors(torch.utils.data.Dataset):
        labels = torch.arange(1100) % 7

        def __init__(self) -> None:
            self.images = images

    got, targets = memory.decode_base(Tensors(), 24, ("label",), num_workers=0, cache_dir=None)
    assert torch.equal(got, torch.stack([memory.square(image, 24) for image in images]))
    assert got.shape == (1100, 3, 24, 24) and torch.equal(targets["label"], Tensors.labels)


def test_the_order_and_augmentation_follow_seed_and_epoch() -> None:
    aug = functools.partial(T.basic, hflip=0.5, padding=2)

    def epoch_batches(epoch: int) -> list[torch.Tensor]:
        loader = digits(augmentation=aug).train_dataloader()
        loader.sampler.set_epoch(epoch)  # as Lightning does before each epoch
        return [images for images, _ in loader]

    first, again, second = epoch_batches(0), epoch_batches(0), epoch_batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], second[0])
    assert first[0].shape == (32, 1, 16, 16)


def test_basic_crops_with_zero_padding_and_flips() -> None:
    image = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(64, 1, 1, 1)
    out = memory.basic_batch(image, torch.Generator().manual_seed(0), image_size=8, hflip=0.0, padding=2)
    assert out.shape == image.shape and out.dtype == torch.uint8
    # every crop is the image shifted by at most 2 px, with zeros where it left the padding
    for crop in out[:, 0]:
        rows, cols = torch.nonzero(crop == 9, as_tuple=True)  # the pixel (1, 1), when still inside
        if len(rows):
            dy, dx = int(rows[0]) - 1, int(cols[0]) - 1
            assert abs(dy) <= 2 and abs(dx) <= 2
            assert torch.equal(crop, shifted(image[0, 0], dy, dx))
    assert len({tuple(c.flatten().tolist()) for c in out}) > 5  # the positions differ
    flipped = memory.basic_batch(image, torch.Generator().manual_seed(0), image_size=8, hflip=1.0, padding=0)
    assert torch.equal(flipped, image.flip(-1))


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(image)
    h, w = image.shape
    src = image[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def test_standard_resizes_crops_flips_and_jitters_whole_batches() -> None:
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = memory.standard_batch(images, g, image_size=32)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # the whole image, no flip, no jitter: the image resized
    whole = memory.standard_batch(images, g, image_size=40, scale=(1.0, 1.0), hflip=0.0, jitter=0.0)
    boxes = memory.resized_crop_boxes(
        16, 40, (1.0, 1.0), torch.Generator().manual_seed(1), torch.device("cpu")
    )
    square = (boxes[:, 2] - boxes[:, 0] == 40) & (boxes[:, 3] - boxes[:, 1] == 40)
    assert square.any()
    # bilinear sampling over the same grid: each pixel stays within a few grey levels of its neighbourhood
    blurred = torch.nn.functional.avg_pool2d(images.float() / 255, 3, 1, 1)
    assert (whole - images.float() / 255).abs().mean() < (blurred - images.float() / 255).abs().mean() + 0.05
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert (areas <= 40 * 40).all()


def test_other_presets_run_their_own_steps_on_the_decoded_images() -> None:
    dm = digits(augmentation=functools.partial(T.randaugment, num_ops=2, magnitude=9, hflip=0.0))
    loader = dm.train_dataloader()
    assert loader.transform.per_image is not None and loader.transform.batched is None
    images, labels = next(iter(loader))
    assert images.shape == (32, 1, 16, 16) and images.dtype == torch.float32 and labels.shape == (32,)


def test_anomaly_flags_and_labels_come_with_the_batches() -> None:
    spec = SampleSpec(needs=("anomaly",), wants=("mask", "label"), normalize=False, collate=stack_collate)
    dm = digits(spec=spec, normal_classes=[0])
    assert dm.memory is not None
    images, targets = next(iter(dm.test_dataloader()))
    assert set(targets) == {"anomaly", "label"}
    assert torch.equal(targets["anomaly"], (targets["label"] != 0).long())
    assert images.min() >= 0 and images.max() <= 1  # not normalised: the task keeps [0, 1]


def test_tasks_with_masks_take_the_dataloader_path_and_true_says_why() -> None:
    spec = SampleSpec(needs=("label",), eval_geometry="resize", collate=pad_collate)
    assert digits(spec=spec).memory is None
    with pytest.raises(ValueError, match="in_memory=true cannot hold this data: .*collates"):
        digits(spec=spec, in_memory="true")
    with pytest.raises(ValueError, match="data.in_memory=sometimes: choose auto"):
        DigitsDataModule(image_size=16, in_memory="sometimes")


def test_a_photo_folder_is_decoded_once_and_read_from_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_image_folder(tmp_path / "photos", ["cat", "dog"], n_per_class=6, n_test_per_class=2)

    def folder() -> ImageFolderDataModule:
        dm = ImageFolderDataModule(root=root, num_classes=2, image_size=24, resize_size=28, batch_size=4)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    first = folder()
    assert first.memory is not None and first.memory["train"].images.shape[-2:] == (28, 28)
    caches = list(root.glob(".cnnlab_decoded_28px_*.pt"))
    assert len(caches) == 2  # train/ and test/, each decoded once
    # a second run reads the cache: no file is decoded again
    monkeypatch.setattr(memory._Squared, "__getitem__", lambda self, i: pytest.fail("decoded again"))
    second = folder()
    assert torch.equal(second.memory["train"].images, first.memory["train"].images)
    images, _ = next(iter(second.val_dataloader()))
    assert images.shape[1:] == (3, 24, 24)
    # a replaced photo changes the key: that folder is decoded again
    monkeypatch.undo()
    photo = next((root / "test" / "cat").iterdir())
    Image.new("RGB", (30, 30), "white").save(photo)
    os.utime(photo, ns=(1, 1))
    folder()
    # a new cache of test/ in place of the old one, which held the replaced photo; train/'s is kept
    now = list(root.glob(".cnnlab_decoded_28px_*.pt"))
    assert len(now) == 2 and len(set(now) & set(caches)) == 1


def test_sixteen_bit_photos_stay_on_the_dataloader_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for split, n in (("train", 6), ("test", 2)):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(n):
                array = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
                Image.fromarray(array).save(tmp_path / split / label / f"{i}.png")
    options = {"root": tmp_path, "num_classes": 2, "in_channels": 1, "image_size": 8, "batch_size": 4}
    with caplog.at_level(logging.INFO, logger="cnnlab.data.base"):
        dm = ImageFolderDataModule(**options)  # type: ignore[arg-type]
        dm.setup("fit")
    assert dm.memory is None and "served by DataLoaders (its images are torch.uint16" in caplog.text
    with pytest.raises(ValueError, match="holds 8-bit images"):
        ImageFolderDataModule(**options, in_memory="true").setup("fit")  # type: ignore[arg-type]
    # nor into the decoded cache of the DataLoader path: auto decodes them per sample, true says why not
    assert not list(tmp_path.glob(".cnnlab_resized_*")) and dm.train_set[0][0].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="decoded_cache=true cannot serve .*the decoded cache holds 8-bit"):
        ImageFolderDataModule(**options, decoded_cache="true").setup("fit")  # type: ignore[arg-type]


def shares(
    images: int, world: int, batch: int = 5, sampler: object = None
) -> tuple[list[int], list[list[int]]]:
    """What each of ``world`` DDP processes takes of ``images`` images numbered 0, 1, ... (its label) in
    batches of ``batch``, in ``sampler``'s order (else unshuffled): its loader's length and the labels of its
    epoch."""
    data = memory.Decoded(
        torch.arange(images, dtype=torch.uint8).view(images, 1, 1, 1), {"label": torch.arange(images)}
    )
    identity = memory.BatchTransform(T.none, 1, 1, None, None, "crop", train=False)
    lengths, seen = [], []
    for rank in range(world):
        loader = memory.MemoryLoader(
            data,
            batch,
            identity,
            memory.label_collate,
            lambda: torch.device("cpu"),
            sampler,
            shard=lambda r=rank: (r, world),
        )
        lengths.append(len(loader))
        seen.append([int(v) for _, labels in loader for v in labels])
    return lengths, seen


def test_each_process_of_a_ddp_run_takes_its_share_of_the_order() -> None:
    class Order:
        epoch, seed = 0, 0

        def __iter__(self):
            return iter([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])

    lengths, seen = shares(images=10, world=2, batch=2, sampler=Order())
    assert lengths == [3, 3] and seen == [[9, 7, 5, 3, 1], [8, 6, 4, 2, 0]]


def test_ddp_processes_take_as_many_steps_when_the_set_does_not_divide() -> None:
    """21 images on 2 processes in batches of 5: shares of 11 and 10 would be 3 and 2 batches, and each DDP
    step waits for every process, so the first would wait for ever at its third. Each takes 11, as
    DistributedSampler pads: the first image of the order fills the last place."""
    lengths, seen = shares(images=21, world=2)
    assert lengths == [3, 3]
    assert seen[0] == list(range(0, 21, 2)) and seen[1] == [*range(1, 21, 2), 0]


def test_every_ddp_process_gets_a_share_of_a_set_smaller_than_their_count() -> None:
    """2 images on 5 processes: each still takes one (the order repeated, as DistributedSampler does), so no
    process has an empty epoch while the others wait for it at a step."""
    lengths, seen = shares(images=2, world=5)
    assert lengths == [1] * 5
    assert seen == [[0], [1], [0], [1], [0]]


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_each_ddp_process_trains_when_its_share_is_smaller_than_a_batch(in_memory: str) -> None:
    """1294 training digits on 2 processes, batches of 1000: each process's share (647) is one smaller batch.
    Dropping it as a partial last batch, as a single process would drop its 294 left over, left nothing."""
    dm = digits(in_memory=in_memory)
    dm.batch_size = 1000
    alone = dm.train_dataloader()
    # one process: a batch of 1000 images, the other 294 in another epoch
    assert len(alone) == 1 and alone.drop_last
    dm.trainer = SimpleNamespace(  # what the datamodule reads of a DDP trainer
        global_rank=1, world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    loader = dm.train_dataloader()
    if in_memory == "true":
        assert len(loader) == 1 and len(next(iter(loader))[1]) == 647
    else:  # Lightning gives each process its share through a DistributedSampler, keeping drop_last
        assert not loader.drop_last
    dm.batch_size = 600
    assert dm.train_dataloader().drop_last and len(dm.train_dataloader()) == (1 if in_memory == "true" else 2)


def test_workers_default_to_the_cores_this_process_may_use_minus_one() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert loader_workers("auto") == max(0, cores - 1) and loader_workers(3) == 3
    with pytest.raises(ValueError, match="num_workers=many: give a number"):
        loader_workers("many")


def test_default_workers_raise_no_warning_on_a_two_core_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    root = write_image_folder(tmp_path / "photos", ["cat", "dog"], n_per_class=4, n_test_per_class=2)
    dm = ImageFolderDataModule(root=root, num_classes=2, image_size=16, batch_size=4, in_memory="false")
    dm.setup("fit")
    assert dm.num_workers == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16)
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]


def test_a_spec_handed_over_by_instantiate_is_still_the_tasks(make_cfg) -> None:
    """hydra.utils.instantiate(cfg.data, spec=...) turns the spec into a config, whose keys() are its field
    names: read as such, the in-memory splits would hold no labels."""
    from hydra.utils import instantiate

    from cnnlab.data.base import as_spec
    from cnnlab.tasks.classification import ClassificationTask

    datamodule = instantiate(make_cfg().data, spec=ClassificationTask.samples)
    assert datamodule.spec == ClassificationTask.samples
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    assert labels.dtype == torch.int64 and labels.shape == (len(images),) and int(labels.max()) <= 9
    with pytest.raises(
        TypeError, match="spec: needz are no fields of a SampleSpec \\(collate, eval_geometry"
    ):
        as_spec({"needz": ["label"]})
