"""Mask folders: images and index masks paired by name, class names from three sources, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakedense import SCENES, class_mask, write_mask_folder
from PIL import Image
from torchvision import tv_tensors

from cnnlab.data.errors import DatasetFormatError, DatasetNotFoundError
from cnnlab.data.mask_folder import MaskFolder

NAMES = ["background", "road", "car", "tree"]


def test_reads_grey_and_palette_masks_with_names_from_classes_txt(tmp_path: Path) -> None:
    dataset = MaskFolder(write_mask_folder(tmp_path, classes=NAMES))
    assert dataset.class_names == NAMES and len(dataset) == len(SCENES)
    for (image, target), scene in zip(dataset, SCENES, strict=True):  # sorted by name, as SCENES are
        assert isinstance(image, tv_tensors.Image) and image.shape == (3, scene.height, scene.width)
        assert image.dtype == torch.uint8
        mask = target["mask"]
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
        assert torch.equal(mask, torch.from_numpy(class_mask(scene, offset=1)).long())


def test_names_from_the_argument_win(tmp_path: Path) -> None:
    names = ["bg", "a", "b", "c", "d"]
    assert MaskFolder(write_mask_folder(tmp_path, classes=NAMES), class_names=names).class_names == names


def test_names_from_the_largest_index_when_none_are_given(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path)
    assert MaskFolder(root).class_names == ["0", "1", "2", "3"]  # scene_a's label 2 is index 3


def test_ignore_index_is_kept_and_not_counted_as_a_class(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path)
    scene = SCENES[1]
    Image.fromarray(class_mask(scene, offset=1, border=255)).save(root / "masks" / f"{scene.name}.png")
    dataset = MaskFolder(root)
    assert dataset.class_names == ["0", "1", "2", "3"]
    assert 255 in dataset[1][1]["mask"]


def test_sixteen_bit_images_stay_sixteen_bit(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path, mode="I;16")
    image, _ = MaskFolder(root)[0]
    assert image.dtype == torch.uint16 and image.shape == (3, SCENES[0].height, SCENES[0].width)
    assert int(image.to(torch.int32).max()) > 255  # the full range is kept, not squeezed to 8 bits
    assert MaskFolder(root, channels=1)[0][0].shape == (1, SCENES[0].height, SCENES[0].width)


def test_greyscale_images_are_read_as_three_channels(tmp_path: Path) -> None:
    image, _ = MaskFolder(write_mask_folder(tmp_path, mode="L"), channels=3)[0]
    assert image.shape == (3, SCENES[0].height, SCENES[0].width)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.mark.parametrize(
    ("removed", "words"), [("masks", "1 images in .* have no mask"), ("images", "1 masks")]
)
def test_unpaired_files_are_named(tmp_path: Path, removed: str, words: str) -> None:
    root = write_mask_folder(tmp_path)
    (root / removed / "scene_b.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=words) as raised:
        MaskFolder(root)
    assert "scene_b.png" in str(raised.value)


def test_index_beyond_the_names_is_named_when_the_folder_is_opened(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path, classes=NAMES[:3])  # scene_b holds indices 0 and 2 only, scene_a 3
    with pytest.raises(DatasetFormatError, match=r"scene_a.png holds class indices \[3\] but there are 3"):
        MaskFolder(root)


def test_two_images_of_one_name_are_refused(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path)
    Image.new("RGB", (4, 4)).save(root / "images" / "scene_a.jpg")
    with pytest.raises(DatasetFormatError, match="scene_a.jpg and scene_a.png .* share a name"):
        MaskFolder(root)


def test_mask_of_another_size_is_named(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path)
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(root / "masks" / "scene_c.png")
    with pytest.raises(DatasetFormatError, match=r"scene_c.png is \(3, 3\) \(H, W\) but its image"):
        MaskFolder(root)[2]


def test_colour_mask_is_refused(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path, classes=NAMES)
    Image.new("RGB", (SCENES[2].width, SCENES[2].height)).save(root / "masks" / "scene_c.png")
    with pytest.raises(ValueError, match="scene_c.png: a mask must store one class index per pixel"):
        MaskFolder(root)[2]


def test_missing_folders_and_bad_classes_txt(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="images does not exist: a mask folder holds images/"):
        MaskFolder(tmp_path)
    root = write_mask_folder(tmp_path)
    (root / "classes.txt").write_text("background\n\ncar\n")
    with pytest.raises(DatasetFormatError, match="classes.txt must name one class per line"):
        MaskFolder(root)


def write_black_and_white(root: Path, border: bool = False) -> None:
    """Rewrite the masks as most labelling tools save them: 0 background, 255 every object (greyscale PNG);
    ``border``: class indices 0 and 1 with VOC's ignored ring (255) around each object instead."""
    for scene in SCENES:
        if border:
            mask = class_mask(scene, offset=1, border=255)
            mask[(mask > 0) & (mask < 255)] = 1
        else:
            mask = np.where(class_mask(scene) > 0, 255, 0).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"{scene.name}.png")


def test_black_and_white_masks_of_two_classes_are_refused_naming_the_option(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path)
    write_black_and_white(root)
    refusal = r"only the values 0 and 255 \(scene_a.png among them\)"
    with pytest.raises(DatasetFormatError, match=refusal) as refused:
        MaskFolder(root, ["background", "object"])
    assert "set data.binary_masks=true, which reads 255 as class 1" in str(refused.value)
    dataset = MaskFolder(root, ["background", "object"], binary_masks=True)
    for (_, target), scene in zip(dataset, SCENES, strict=True):
        assert torch.equal(target["mask"], torch.from_numpy(class_mask(scene) > 0).long())
    assert dataset.mask_classes == [{0, 1}, {0, 1}, {0}]  # scene_c has no object
    with pytest.raises(ValueError, match="binary_masks=true reads black-and-white masks .* as 2 classes"):
        MaskFolder(root, ["background", "road", "car"], binary_masks=True)


def test_255_beside_class_one_stays_the_ignored_border(tmp_path: Path) -> None:
    root = write_mask_folder(tmp_path)
    write_black_and_white(root, border=True)
    dataset = MaskFolder(root, ["background", "object"])
    assert set(dataset[0][1]["mask"].unique().tolist()) == {0, 1, 255}
