"""Image-folder and landmark datamodules read JPEG/PNG folders of mixed sizes; bad layouts are explained."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from fakedata import write_image_folder, write_landmarks
from PIL import Image

import cnnlab.data.base
from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.image_folder import ImageFolderDataModule, LandmarksDataModule, landmark_name

CLASSES = ["cat", "dog", "fish"]


def folder_dm(root: Path, **kwargs: object) -> ImageFolderDataModule:
    options = {"root": root, "num_classes": 3, "image_size": 32, "resize_size": 40, "batch_size": 8, **kwargs}
    options.setdefault("val_fraction", 0.2)
    return ImageFolderDataModule(**options)  # type: ignore[arg-type]


def ready(dm: ImageFolderDataModule) -> ImageFolderDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "photos", CLASSES, n_per_class=10, n_test_per_class=3)


def test_reads_mixed_sizes_and_formats(photos: Path) -> None:
    assert {p.suffix for p in photos.rglob("*.*")} >= {".jpg", ".png"}
    assert len({Image.open(p).size for p in photos.rglob("*.jpg")}) > 1
    dm = ready(folder_dm(photos, mean=[0.5] * 3, std=[0.25] * 3))
    assert dm.class_names == CLASSES
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 9)
    grey = next(i for i, (path, _) in enumerate(dm.load_split("train").samples) if path.endswith(".png"))
    image, _ = dm.load_split("train")[grey]
    assert image.shape[0] == 3  # a greyscale PNG is served with the channels the model expects
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    assert images.min() >= -2.0 - 1e-5 and images.max() <= 2.0 + 1e-5
    test_images, _ = next(iter(dm.test_dataloader()))
    assert test_images.shape == (8, 3, 32, 32)


def test_greyscale_mode(photos: Path) -> None:
    dm = ready(folder_dm(photos, in_channels=1, mean=[0.5], std=[0.25]))
    assert dm.load_split("test")[0][0].shape[0] == 1
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (6, 1, 32, 32)


def test_split_is_deterministic(photos: Path) -> None:
    first, second = ready(folder_dm(photos, seed=7)), ready(folder_dm(photos, seed=7))
    assert first.val_set.source.indices == second.val_set.source.indices
    assert first.mean == second.mean


def test_statistics_are_computed_once_and_cached(photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ready(folder_dm(photos))
    cache = photos / ".cnnlab_stats_RGB.json"
    assert cache.is_file() and len(first.mean) == 3 and all(0.0 < v < 1.0 for v in first.mean)
    assert [entry["mean"] for entry in json.loads(cache.read_text()).values()] == [first.mean]

    def recompute(*args: object, **kwargs: object) -> None:
        raise AssertionError("statistics were recomputed instead of read from the cache")

    monkeypatch.setattr(cnnlab.data.base, "channel_statistics", recompute)
    second = ready(folder_dm(photos))
    assert (second.mean, second.std) == (first.mean, first.std)
    with pytest.raises(AssertionError, match="recomputed"):
        ready(folder_dm(photos, in_channels=1))  # greyscale statistics are not the RGB ones


def test_read_only_root_computes_statistics_without_cache(
    photos: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_access = os.access
    # chmod does not stop root, which tests may run as: report the folder read-only as a read-only mount would
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == photos else real_access(p, mode, **kw)
    )
    with caplog.at_level(logging.INFO, logger="cnnlab.data.image_folder"):
        dm = ready(folder_dm(photos))
    assert len(dm.mean) == 3 and not list(photos.glob(".cnnlab_stats*"))
    assert "read-only" in caplog.text


def test_hidden_folders_and_files_are_ignored(photos: Path) -> None:
    for split in ("train", "test"):
        (photos / split / ".ipynb_checkpoints").mkdir()
    (photos / "train" / "cat" / "._resource_fork.jpg").write_bytes(b"not an image")
    dm = ready(folder_dm(photos, mean=[0.5] * 3, std=[0.25] * 3))
    assert dm.class_names == CLASSES and len(dm.train_set) + len(dm.val_set) == 30


@pytest.mark.parametrize("missing", ["train", "test"])
def test_missing_split_folder(photos: Path, missing: str) -> None:
    shutil.rmtree(photos / missing)
    with pytest.raises(DatasetNotFoundError, match=f"has no {missing}/ folder"):
        ready(folder_dm(photos))


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist") as raised:
        ready(folder_dm(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(raised.value) and "data.root" in str(raised.value)


def test_no_class_folders(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
    with pytest.raises(DatasetFormatError, match="has no class folders"):
        ready(folder_dm(tmp_path))


def test_empty_class_folder_is_named(photos: Path) -> None:
    (photos / "train" / "emu").mkdir()
    (photos / "test" / "emu").mkdir()
    (photos / "test" / "emu" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetFormatError, match="hold no images: emu"):
        ready(folder_dm(photos, num_classes=4))


def test_test_classes_must_match_train_classes(photos: Path) -> None:
    (photos / "test" / "fish").rename(photos / "test" / "shark")
    with pytest.raises(DatasetFormatError, match=r"only in train/: \['fish'\]; only in test/: \['shark'\]"):
        ready(folder_dm(photos))


def test_num_classes_mismatch(photos: Path) -> None:
    with pytest.raises(ValueError, match="set data.num_classes=3"):
        ready(folder_dm(photos, num_classes=5))


def test_in_channels_must_be_one_or_three(photos: Path) -> None:
    with pytest.raises(ValueError, match="in_channels must be 1"):
        folder_dm(photos, in_channels=2)


def test_fake_photos_are_learnable(photos: Path) -> None:
    dm = ready(folder_dm(photos, val_fraction=0.1, mean=[0.5] * 3, std=[0.25] * 3))
    train_x, train_y = (torch.cat(t) for t in zip(*dm.train_dataloader(), strict=True))
    centroids = torch.stack([train_x[train_y == k].flatten(1).mean(0) for k in range(3)])
    test_x, test_y = (torch.cat(t) for t in zip(*dm.test_dataloader(), strict=True))
    accuracy = (torch.cdist(test_x.flatten(1), centroids).argmin(1) == test_y).float().mean().item()
    assert accuracy > 0.8


# --- landmarks -------------------------------------------------------------------------------------------


def landmarks_dm(root: Path, **kwargs: object) -> LandmarksDataModule:
    options = {
        "root": root,
        "num_classes": 3,
        "image_size": 32,
        "resize_size": 36,
        "download": False,
        **kwargs,
    }
    return LandmarksDataModule(**options)  # type: ignore[arg-type]


def test_landmark_names_drop_the_number_and_underscores() -> None:
    assert landmark_name("00.Haleakala_National_Park") == "Haleakala National Park"
    assert landmark_name("49.Temple_of_Olympian_Zeus") == "Temple of Olympian Zeus"


def test_landmark_defaults() -> None:
    dm = LandmarksDataModule(root="unused")
    assert (dm.num_classes, dm.in_channels, dm.image_size, dm.resize_size) == (50, 3, 224, 256)


@pytest.mark.parametrize("point_at", ["parent", "landmark_images"])
def test_landmarks_read_from_either_root(tmp_path: Path, point_at: str) -> None:
    folder = write_landmarks(tmp_path, n_classes=3, n_per_class=5)
    root = tmp_path if point_at == "parent" else folder
    dm = ready(landmarks_dm(root))
    assert dm.class_names == ["Fake Landmark 0", "Fake Landmark 1", "Fake Landmark 2"]
    assert len(dm.test_set) == 6 and (folder / ".cnnlab_stats_RGB.json").is_file()
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (3, 32, 32)


def test_landmarks_offline_download_names_url_and_folder(tmp_path: Path, network_lookups: list[str]) -> None:
    dm = landmarks_dm(tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError) as raised:
        dm.prepare_data()
    message = str(raised.value)
    assert network_lookups and "downloading them failed" in message
    assert LandmarksDataModule.url in message and f"unzip it into {tmp_path}" in message
    assert not (tmp_path / "landmark_images.zip").exists()


def test_landmarks_missing_with_download_off(tmp_path: Path, network_lookups: list[str]) -> None:
    dm = landmarks_dm(tmp_path)
    dm.prepare_data()
    with pytest.raises(DatasetNotFoundError, match="does not exist") as raised:
        dm.setup("fit")
    assert LandmarksDataModule.url in str(raised.value) and network_lookups == []


def test_landmarks_zip_placed_by_hand_is_unzipped(tmp_path: Path, network_lookups: list[str]) -> None:
    source = tmp_path / "elsewhere"
    write_landmarks(source, n_classes=3, n_per_class=4)
    shutil.make_archive(
        str(tmp_path / "data" / "landmark_images"), "zip", root_dir=source, base_dir="landmark_images"
    )
    dm = ready(landmarks_dm(tmp_path / "data"))
    assert len(dm.test_set) == 6 and network_lookups == []


def test_landmarks_truncated_zip(tmp_path: Path) -> None:
    (tmp_path / "landmark_images.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetFormatError, match="not a complete zip file"):
        landmarks_dm(tmp_path).prepare_data()
