"""Penn-Fudan as distributed: boxes and masks follow the instance ids; missing files are explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakedense import SCENES, write_penn_fudan
from PIL import Image
from torchvision import tv_tensors

from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.penn_fudan import URL, PennFudanPed, download


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_penn_fudan(tmp_path)


@pytest.mark.parametrize("level", ["parent", "dataset"])
def test_reads_boxes_masks_and_labels(folder: Path, level: str) -> None:
    dataset = PennFudanPed(folder.parent if level == "parent" else folder)
    assert len(dataset) == len(SCENES)
    assert dataset.class_names == ["person"] and dataset.segmentation_class_names == ["background", "person"]
    for (image, target), scene in zip(dataset, SCENES, strict=True):
        n, size = len(scene.rects), (scene.height, scene.width)
        assert (
            isinstance(image, tv_tensors.Image) and image.shape == (3, *size) and image.dtype == torch.uint8
        )
        assert target["boxes"].tolist() == [rect.box for rect in scene.rects]
        assert target["boxes"].shape == (n, 4) and tuple(target["boxes"].canvas_size) == size
        assert target["labels"].tolist() == [0] * n and target["labels"].dtype == torch.int64
        masks = target["instance_masks"]
        assert masks.shape == (n, *size) and masks.dtype == torch.uint8
        expected = torch.zeros(size, dtype=torch.int64)
        for instance, rect in zip(masks, scene.rects, strict=True):
            assert instance.sum() == (rect.x1 - rect.x0) * (rect.y1 - rect.y0)
            assert instance[rect.y0 : rect.y1, rect.x0 : rect.x1].all()
            expected[rect.y0 : rect.y1, rect.x0 : rect.x1] = 1
        assert isinstance(target["mask"], tv_tensors.Mask) and torch.equal(target["mask"], expected)


def test_one_channel(folder: Path) -> None:
    image, _ = PennFudanPed(folder, channels=1)[0]
    assert image.shape == (1, SCENES[0].height, SCENES[0].width)


def test_image_without_mask_is_named(folder: Path) -> None:
    (folder / "PedMasks" / "FudanPed00002_mask.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="1 of 3 images have no mask") as raised:
        PennFudanPed(folder)
    assert "FudanPed00002_mask.png" in str(raised.value)


def test_mask_without_its_photo_is_named(folder: Path) -> None:
    (folder / "PNGImages" / "FudanPed00003.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="1 masks in .*PedMasks have no photo in") as raised:
        PennFudanPed(folder)
    message = str(raised.value)
    assert "FudanPed00003_mask.png" in message and "add the photo, or remove the mask" in message


def test_mask_of_another_size_is_named(folder: Path) -> None:
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(folder / "PedMasks" / "FudanPed00001_mask.png")
    with pytest.raises(DatasetFormatError, match="FudanPed00001_mask.png is .* must match its image"):
        PennFudanPed(folder)[0]


def test_missing_dataset_names_folders_and_url(tmp_path: Path, network_lookups: list[str]) -> None:
    with pytest.raises(DatasetNotFoundError) as raised:
        PennFudanPed(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "PennFudanPed") in message and "PNGImages/" in message and URL in message
    assert network_lookups == []


def test_offline_download_says_what_to_fetch_and_where(tmp_path: Path, network_lookups: list[str]) -> None:
    with pytest.raises(DatasetNotFoundError) as raised:
        download(tmp_path / "data")
    message = str(raised.value)
    assert network_lookups, "the download was attempted"
    assert "downloading it failed" in message and "Temporary failure in name resolution" in message
    assert URL in message and "PennFudanPed.zip" in message and str(tmp_path / "data") in message
    assert not (tmp_path / "data" / "PennFudanPed.zip").exists()


def test_download_keeps_what_is_there(folder: Path, network_lookups: list[str]) -> None:
    assert download(folder.parent) == folder and network_lookups == []
