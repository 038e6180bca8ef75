"""The decoded cache of the DataLoader path: photos decoded once at the training size, read by workers."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fakedata import write_image_folder
from fakedense import SCENES, write_mask_folder, write_mvtec
from PIL import Image

import cnnlab.data.io
import cnnlab.data.mvtec
from cnnlab.data import memory, resized, segmentation_presets
from cnnlab.data import transforms as T
from cnnlab.data.digits import DigitsDataModule
from cnnlab.data.image_folder import ImageFolderDataModule
from cnnlab.data.io import ImageReadError
from cnnlab.data.mask_folder import MaskFolderDataModule
from cnnlab.data.mvtec import MVTecDataModule, WithoutMasks
from cnnlab.tasks.anomaly import AnomalyTask
from cnnlab.tasks.segmentation import SegmentationTask

GREY_LEVEL = 1 / 255 + 1e-6


@pytest.fixture
def category(tmp_path: Path) -> Path:
    # 24 x 16 px photos (larger than the training size below): auto caches them
    return write_mvtec(tmp_path / "mvtec", n_train=6, n_test_good=2, n_per_defect=2)


def mvtec(root: Path, **kwargs: object) -> MVTecDataModule:
    options = {"image_size": 8, "resize_size": 10, "batch_size": 4, "num_workers": 0, **kwargs}
    dm = MVTecDataModule(root=root, download=False, spec=AnomalyTask.samples, **options)  # type: ignore[arg-type]
    dm.setup()
    return dm


def caches(root: Path) -> list[Path]:
    return sorted(root.glob(".cnnlab_resized_*px_*.u8"))


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every image and mask decode fail (forked workers inherit it)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a photo was decoded instead of read from the decoded cache")

    monkeypatch.setattr(cnnlab.data.io, "decode_image", refuse)
    monkeypatch.setattr(cnnlab.data.mvtec, "read_mask", refuse)


def every_batch(dm: MVTecDataModule) -> list:
    return [
        batch
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader())
        for batch in loader
    ]


def test_the_cache_is_written_once_and_reused(
    category: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="cnnlab.data.resized"):
        first = mvtec(category)
    assert len(caches(category)) == 2  # train/ and test/, one file each
    assert "decoded cache built for 12 images" in caplog.text and "at 10 px" in caplog.text
    expected = every_batch(first)
    caplog.clear()
    forbid_decoding(monkeypatch)
    with caplog.at_level(logging.INFO, logger="cnnlab.data.resized"):
        second = mvtec(category)
    assert "decoded cache reused: 12 images" in caplog.text
    for (mine, my_targets), (theirs, their_targets) in zip(every_batch(second), expected, strict=True):
        assert torch.equal(mine, theirs) and torch.equal(my_targets["mask"], their_targets["mask"])
    assert len(caches(category)) == 2


def test_samples_equal_the_per_sample_path_and_masks_stay_aligned(category: Path) -> None:
    cached, plain = mvtec(category), mvtec(category, decoded_cache="false")
    assert isinstance(cached.test_set.source, resized.ResizedFiles)
    assert not isinstance(plain.test_set.source, resized.ResizedFiles)
    defects = 0
    for (mine, my_targets), (theirs, their_targets) in zip(
        every_batch(cached), every_batch(plain), strict=True
    ):
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype == torch.float32
        assert (mine - theirs).abs().max() <= 0.5 / 255 + 1e-6  # resized in float once, stored in 8 bits
        assert my_targets.keys() == their_targets.keys() == {"anomaly", "label", "mask"}
        for key in my_targets:
            assert torch.equal(my_targets[key], their_targets[key]), key
        defects += int(my_targets["mask"].any(dim=(1, 2)).sum())
    assert defects == 4  # the defect masks came through, pixel for pixel


def test_photos_of_mixed_sizes_train_as_on_the_per_sample_path(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "photos", ["cat", "dog"], n_per_class=6, n_test_per_class=2)
    options = {"root": root, "num_classes": 2, "image_size": 16, "resize_size": 20, "batch_size": 4}
    options |= {"in_memory": "false", "num_workers": 0, "mean": [0.5] * 3, "std": [0.25] * 3}
    options["augmentation"] = T.basic

    def batches(decoded_cache: str) -> list:
        dm = ImageFolderDataModule(**options, decoded_cache=decoded_cache)  # type: ignore[arg-type]
        dm.setup("fit")
        torch.manual_seed(0)  # the random crops and flips of the per-sample transforms
        return list(dm.train_dataloader()) + list(dm.test_dataloader())

    cached, plain = batches("true"), batches("false")
    assert len(caches(root)) == 2
    for (mine, my_labels), (theirs, their_labels) in zip(cached, plain, strict=True):
        assert torch.equal(my_labels, their_labels) and mine.shape == theirs.shape
        # non-square photos keep their aspect in the cache: the same crops, within a grey level (x 1/std)
        assert (mine - theirs).abs().max() <= GREY_LEVEL / 0.25


def test_a_category_without_ground_truth_keeps_its_wrapper(category: Path) -> None:
    shutil.rmtree(category / "ground_truth")
    dm = mvtec(category)
    assert isinstance(dm.test_set.source, WithoutMasks)
    assert isinstance(dm.test_set.source.source, resized.ResizedFiles)
    image, target = dm.test_set[3]
    assert image.shape == (3, 8, 8) and "mask" not in target and target["anomaly"] == 1


def test_a_changed_photo_is_decoded_again(category: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mvtec(category)
    mvtec(category, image_size=6, resize_size=6)  # another size: its own caches
    before = caches(category)
    assert len(before) == 4
    photo = sorted((category / "test" / "good").iterdir())[0]
    stat = photo.stat()
    Image.new("RGB", (24, 16), "white").save(photo)
    # even with its modification time put back, the change time gives the rewrite away
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    dm = mvtec(category)
    # a new cache of test/ in place of the one of the files before the change; train/'s is reused, and the
    # caches at 6 px stay (the one of test/ rebuilt when a run asks for that size)
    after = caches(category)
    assert len(after) == 4 and len(set(after) - set(before)) == 1
    (gone,) = set(before) - set(after)
    assert gone.name.startswith(".cnnlab_resized_10px_")
    image, target = dm.test_set[0]
    assert torch.allclose(image, torch.ones_like(image)) and target["label"] == 0


def test_a_photo_spoilt_after_the_cache_was_built_is_reported(category: Path) -> None:
    mvtec(category, in_memory="false")
    photo = sorted((category / "train" / "good").iterdir())[2]
    stat = photo.stat()
    photo.write_bytes(b"\0" * stat.st_size)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    running = set(multiprocessing.active_children())
    with pytest.raises(ImageReadError, match=re.escape(f"{photo}: not an image")):
        mvtec(category, in_memory="false", num_workers=2)
    # the pass's workers are stopped with the error, not 10 s later when the garbage collector frees them
    assert set(multiprocessing.active_children()) <= running


def test_dataloader_workers_read_the_cache(category: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = mvtec(category, num_workers=2)
    forbid_decoding(monkeypatch)
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 8, 8) and targets["mask"].shape == (4, 8, 8)
    assert sum(len(batch[0]) for batch in dm.train_dataloader()) == 4  # 5 train images, drop_last
    # a copy sent to a spawned worker maps the file again rather than carrying its bytes
    source = dm.test_set.source
    copied = pickle.loads(pickle.dumps(source))
    assert copied._pixels is None and len(pickle.dumps(source)) < source.nbytes
    assert torch.equal(copied[3][0], source[3][0]) and torch.equal(copied[3][1]["mask"], source[3][1]["mask"])


def test_a_read_only_folder_falls_back_to_decoding_per_sample(
    category: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # as a read-only mount would (chmod does not stop root, which tests may run as)
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != category and writable(path, mode))
    with caplog.at_level(logging.INFO, logger="cnnlab.data.resized"):
        dm = mvtec(category)
    assert not caches(category) and not isinstance(dm.test_set.source, resized.ResizedFiles)
    assert f"{category} is read-only, so photos are decoded per sample" in caplog.text
    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 8, 8)
    # a cache built while the folder was writable is still read
    monkeypatch.undo()
    mvtec(category)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False)
    assert isinstance(mvtec(category).test_set.source, resized.ResizedFiles)


def test_auto_leaves_photos_at_the_training_size_alone(
    category: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="cnnlab.data.resized"):
        mvtec(category, image_size=16, resize_size=16)
    assert not caches(category)
    assert "photos are about 16 px, no larger than the training size (16 px)" in caplog.text
    mvtec(category, image_size=16, resize_size=16, decoded_cache="true")
    assert len(caches(category)) == 2


def test_bad_choices_are_errors_that_name_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.decoded_cache=sometimes: choose auto .*, true or false"):
        MVTecDataModule(root=tmp_path, download=False, decoded_cache="sometimes")
    with pytest.raises(ValueError, match="decoded_cache=true cannot serve this data: the data is not read"):
        DigitsDataModule(image_size=16, in_memory="false", decoded_cache="true").setup("fit")


def test_segmentation_photos_and_masks_are_cached_at_the_size_evaluation_resizes_to(tmp_path: Path) -> None:
    # scenes of 30 to 48 px (masks greyscale and VOC-palette PNGs) trained at 16 px
    scenes = [replace(scene, name=f"{scene.name}_{i}") for i in range(4) for scene in SCENES]
    root = write_mask_folder(tmp_path / "roads", scenes)
    options = {"root": root, "num_classes": 4, "image_size": 16, "batch_size": 4, "num_workers": 0}
    options |= {"mean": [0.5] * 3, "std": [0.25] * 3, "spec": SegmentationTask.samples}

    def batches(decoded_cache: str, augmentation: object = None) -> list:
        dm = MaskFolderDataModule(**options, decoded_cache=decoded_cache, augmentation=augmentation)
        dm.setup("fit")
        torch.manual_seed(0)  # the random crops and flips of the per-sample transforms
        return [batch for loader in (dm.train_dataloader(), dm.test_dataloader()) for batch in loader]

    cached = batches("auto")
    assert [p.name.split("_")[2] for p in caches(root)] == ["16px"]  # one file: the folder is one dataset
    for augmentation in (None, segmentation_presets.basic):
        mine_all, theirs_all = batches("true", augmentation), batches("false", augmentation)
        for (mine, my_targets), (theirs, their_targets) in zip(mine_all, theirs_all, strict=True):
            assert mine.shape == theirs.shape and my_targets.keys() == their_targets.keys() == {"mask"}
            assert torch.equal(my_targets["mask"], their_targets["mask"])  # masks pixel for pixel
            assert (mine - theirs).abs().max() <= 4 * GREY_LEVEL  # x 1/std: within a grey level
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cached, batches("auto"), strict=True))


def test_a_datasets_reading_options_name_a_cache_of_their_own(tmp_path: Path) -> None:
    class Files(torch.utils.data.Dataset):
        def __init__(self, binary: bool) -> None:
            self.samples = [(tmp_path / "a.png", tmp_path / "a_mask.png")]
            self.read_options = {"binary_masks": binary}

    for name in ("a.png", "a_mask.png"):
        Image.new("L", (4, 4)).save(tmp_path / name)
    plain, binary = (memory.cache_file(tmp_path, "resized", Files(b), 8, suffix=".u8") for b in (False, True))
    assert plain is not None and binary is not None and plain != binary  # 255 is class 1 in one of them
    assert plain == memory.cache_file(tmp_path, "resized", Files(False), 8, suffix=".u8")
