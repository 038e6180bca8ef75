"""MVTec AD category folders: anomaly flags, defect labels in sorted order, defect masks, clear errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from fakedense import MVTEC_DEFECT, write_mvtec
from PIL import Image
from torchvision import tv_tensors

from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.mvtec import ARCHIVE, URL, MVTecAD, download

SIZE = (16, 24)  # (H, W) of the written images


def defect_mask() -> torch.Tensor:
    mask = torch.zeros(SIZE, dtype=torch.int64)
    mask[MVTEC_DEFECT.y0 : MVTEC_DEFECT.y1, MVTEC_DEFECT.x0 : MVTEC_DEFECT.x1] = 1
    return mask


@pytest.fixture
def category(tmp_path: Path) -> Path:
    return write_mvtec(tmp_path)


def test_train_split_is_all_good(category: Path) -> None:
    dataset = MVTecAD(category, split="train")
    assert len(dataset) == 3 and dataset.class_names == ["good", "crack", "scratch"] and dataset.has_masks
    for image, target in dataset:
        assert (
            isinstance(image, tv_tensors.Image) and image.shape == (3, *SIZE) and image.dtype == torch.uint8
        )
        assert (target["anomaly"], target["label"]) == (0, 0)
        assert isinstance(target["mask"], tv_tensors.Mask) and target["mask"].dtype == torch.int64
        assert torch.equal(target["mask"], torch.zeros(SIZE, dtype=torch.int64))


def test_test_split_labels_flags_and_masks(category: Path) -> None:
    dataset = MVTecAD(category, split="test")
    assert len(dataset) == 6
    samples = list(dataset)
    assert [t["label"] for _, t in samples] == [0, 0, 1, 1, 2, 2]  # good, crack, scratch: sorted names
    assert [t["anomaly"] for _, t in samples] == [0, 0, 1, 1, 1, 1]
    for _, target in samples:
        expected = defect_mask() if target["anomaly"] else torch.zeros(SIZE, dtype=torch.int64)
        assert torch.equal(target["mask"], expected)


def test_greyscale_category_read_as_three_channels(tmp_path: Path) -> None:
    category = write_mvtec(tmp_path, category="screw", mode="L")
    image, _ = MVTecAD(category, split="test")[3]
    assert image.shape == (3, *SIZE) and torch.equal(image[0], image[2])
    assert MVTecAD(category, channels=1)[0][0].shape == (1, *SIZE)


def test_missing_masks_are_zeros_with_one_warning(category: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.rmtree(category / "ground_truth" / "crack")
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.mvtec"):
        dataset = MVTecAD(category, split="test")
        samples = list(dataset)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 defect images" in warnings[0]
    assert "ground_truth/crack/000_mask.png" in warnings[0]
    assert not samples[2][1]["mask"].any() and samples[2][1]["anomaly"] == 1
    assert torch.equal(samples[4][1]["mask"], defect_mask())


def test_mask_of_another_size_is_named(category: Path) -> None:
    Image.new("L", (5, 5)).save(category / "ground_truth" / "crack" / "000_mask.png")
    with pytest.raises(DatasetFormatError, match="crack/000_mask.png is .* must match its image"):
        MVTecAD(category, split="test")[2]


def test_dataset_folder_instead_of_a_category(category: Path) -> None:
    write_mvtec(category.parent, category="cable")
    with pytest.raises(
        DatasetNotFoundError, match="holds the categories bottle, cable, not one category"
    ) as raised:
        MVTecAD(category.parent)
    assert str(category) in str(raised.value)


def test_missing_category_names_layout_and_url(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="is not an MVTec AD category folder") as raised:
        MVTecAD(tmp_path / "bottle")
    assert "train/good/*.png" in str(raised.value) and URL in str(raised.value)


def test_unknown_split(category: Path) -> None:
    with pytest.raises(ValueError, match="split='val': MVTec AD has the splits train, test"):
        MVTecAD(category, split="val")


def test_offline_download_says_what_to_fetch_and_where(tmp_path: Path, network_lookups: list[str]) -> None:
    with pytest.raises(DatasetNotFoundError) as raised:
        download(tmp_path / "mvtec")
    message = str(raised.value)
    assert network_lookups, "the download was attempted"
    assert "downloading it failed" in message and "Temporary failure in name resolution" in message
    assert URL in message and ARCHIVE in message and f"into {tmp_path / 'mvtec'}/" in message
    assert "holds every category" in message and str(tmp_path / "mvtec" / "bottle") in message
    assert not (tmp_path / "mvtec" / ARCHIVE).exists()


def test_download_keeps_what_is_there(category: Path, network_lookups: list[str]) -> None:
    assert download(category.parent) == category.parent and network_lookups == []
