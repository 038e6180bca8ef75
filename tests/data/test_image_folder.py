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
import cnnlab.data.scan
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
    monkeypatch.setattr(cnnlab.data.base, "memory_statistics", recompute)  # the in-memory path's
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


@pytest.mark.parametrize(
    ("missing", "says"), [("train", "has no train/ folder"), ("test", "but no test/ or val/ folder")]
)
def test_missing_split_folder(photos: Path, missing: str, says: str) -> None:
    shutil.rmtree(photos / missing)
    with pytest.raises(DatasetNotFoundError, match=says):
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
    with pytest.raises(DatasetFormatError, match="hold no readable images: emu"):
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
    assert LandmarksDataModule.url in message and f"put the zip in {tmp_path}" in message
    assert "data.download=true" not in message  # it is true already: the advice is to run where online
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


# --- layouts people have, bad files, bit depths, cached statistics, measured sizes ------------------------


def test_train_and_val_serve_validation_and_test(photos: Path, caplog: pytest.LogCaptureFixture) -> None:
    (photos / "test").rename(photos / "val")  # the layout of PyTorch's transfer-learning tutorial data
    with caplog.at_level(logging.INFO, logger="cnnlab.data.image_folder"):
        dm = ready(folder_dm(photos, mean=[0.5] * 3, std=[0.25] * 3))
    assert len(dm.train_set) == 30 and len(dm.val_set) == 9 and len(dm.test_set) == 9  # nothing carved
    assert "val/ is the validation split and the test split" in caplog.text


def test_train_val_and_test_each_serve_their_split(photos: Path) -> None:
    shutil.copytree(photos / "test", photos / "val")
    (photos / "val" / "cat" / "test_000.jpg").unlink()
    dm = ready(folder_dm(photos, mean=[0.5] * 3, std=[0.25] * 3))
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 8, 9)


def plant_bad_files(photos: Path) -> dict[str, str]:
    """One file of each bad kind among good photos, with the words its reason must hold."""
    good = (photos / "train" / "cat" / "train_000.jpg").read_bytes()
    bad = {
        "train/cat/truncated.jpg": "truncated",
        "train/cat/empty.jpg": "empty file",
        "train/dog/notes.jpg": "not an image",
        "train/dog/readme.txt": "not an image file",
        "train/fish/anim.gif": "GIF",
        "train/stray.jpg": "not in a class folder",
        "test/fish/half.jpg": "truncated",
    }
    (photos / "train/cat/truncated.jpg").write_bytes(good[: len(good) // 2])
    (photos / "train/cat/empty.jpg").write_bytes(b"")
    (photos / "train/dog/notes.jpg").write_text("a text file named like a photo")
    (photos / "train/dog/readme.txt").write_text("about the photos")
    Image.new("RGB", (8, 8)).save(photos / "train/fish/anim.gif")
    (photos / "train/stray.jpg").write_bytes(good)
    (photos / "test/fish/half.jpg").write_bytes(good[: len(good) // 3])
    return bad


def test_bad_files_are_skipped_and_each_named_with_its_reason(photos: Path, make_cfg, tmp_path: Path) -> None:
    bad = plant_bad_files(photos)
    from omegaconf import open_dict

    from cnnlab.train import train

    cfg = make_cfg(
        "data=image_folder",
        f"data.root={photos}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.max_epochs=2",
        "export=null",
        "task.figures=false",
    )
    with open_dict(cfg):
        cfg.callbacks = {}
    record = train(cfg)
    assert record["epochs"] == 2 and 0 <= record["test/acc"] <= 1  # trained to the end on the good files
    listed = dict(line.split("\t") for line in (tmp_path / "run" / "bad_files.txt").read_text().splitlines())
    assert {str(Path(p).relative_to(photos)) for p in listed} == set(bad)
    for path, reason in listed.items():
        assert bad[str(Path(path).relative_to(photos))] in reason, (path, reason)


def test_bad_files_error_stops_at_setup_naming_the_first(photos: Path) -> None:
    plant_bad_files(photos)
    with pytest.raises(
        DatasetFormatError, match=r"(?s)stray.jpg: not in a class folder.*\(7 bad files in all\).*bad_files=s"
    ):
        ready(folder_dm(photos, bad_files="error"))


def test_the_file_check_is_cached_and_redone_for_changed_files(
    photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready(folder_dm(photos, mean=[0.5] * 3, std=[0.25] * 3))
    assert (photos / ".cnnlab_scan.json").is_file()
    checked: list[Path] = []
    real = cnnlab.data.scan.check_image
    monkeypatch.setattr(cnnlab.data.scan, "check_image", lambda p: checked.append(p) or real(p))
    ready(folder_dm(photos, mean=[0.5] * 3, std=[0.25] * 3))
    assert checked == []  # nothing changed: every result from the cache
    changed = photos / "train" / "dog" / "train_001.jpg"
    changed.write_bytes(changed.read_bytes()[:100])
    dm = ready(folder_dm(photos, mean=[0.5] * 3, std=[0.25] * 3))
    assert checked == [changed] and dm.bad_files == [
        (str(changed), "a truncated image (an interrupted copy or download?)")
    ]


def test_sixteen_bit_photos_are_scaled_not_clipped(tmp_path: Path) -> None:
    import numpy as np

    for split in ("train", "test"):
        for name, level in (("dark", 4000), ("light", 60000)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((16, 16), level + i, dtype=np.uint16)).save(folder / f"{i}.png")
    dm = ready(
        ImageFolderDataModule(root=tmp_path, num_classes=2, in_channels=1, image_size=16, val_fraction=0.25)
    )
    images, labels = next(iter(dm.test_dataloader()))
    raw = torch.stack([dm.test_set[i][0] for i in range(len(dm.test_set))])
    assert torch.equal(images, raw)
    # normalised values of 4000/65535 and 60000/65535: two levels apart, neither clipped to white
    pixel = images.flatten(1).mean(1) * dm.std[0] + dm.mean[0]
    dark, light = pixel[labels == 0], pixel[labels == 1]
    assert dark.max() < 0.07 and 0.9 < light.min() < 0.93


def test_statistics_cache_is_keyed_by_the_files(photos: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = ready(folder_dm(photos))
    with caplog.at_level(logging.INFO, logger="cnnlab.data.base"):
        again = ready(folder_dm(photos))
    assert again.mean == first.mean and "read from" in caplog.text
    # the same names, counts and sizes, other pixels: the cached statistics must not come back
    for path in (photos / "train").rglob("*.jpg"):
        with Image.open(path) as image:
            Image.new("RGB", image.size, (250, 250, 250)).save(path)
    replaced = ready(folder_dm(photos))
    assert replaced.mean != first.mean


def test_image_size_is_the_images_own_when_not_given(tmp_path: Path) -> None:
    from cnnlab.data.image_folder import folder_image_size

    small = write_image_folder(tmp_path / "small", CLASSES, n_per_class=3, sizes=((32, 32), (32, 40)))
    assert folder_image_size(small) == 32
    big = write_image_folder(tmp_path / "big", CLASSES, n_per_class=3, sizes=((640, 480),))
    assert folder_image_size(big) == 224  # capped at a model's usual input
