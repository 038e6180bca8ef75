"""The embedded digits: class subsets, few images per class drawn by seed, and translated digits."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from cnnlab.data.digits import DigitsDataModule, place_on_canvas


def raw(dm: DigitsDataModule, split: str) -> tuple[torch.Tensor, list[int]]:
    """The uint8 images and labels of a split, before any transform."""
    items = [dm.load_split(split)[i] for i in range(len(dm.load_split(split)))]
    return torch.stack([image for image, _ in items]), [int(label) for _, label in items]


def ink(dm: DigitsDataModule, label: int) -> set[bytes]:
    """The images of one label, from both splits, as bytes."""
    found = set()
    for split in ("train", "test"):
        images, labels = raw(dm, split)
        found |= {bytes(img.flatten().tolist()) for img, y in zip(images, labels, strict=True) if y == label}
    return found


def test_classes_are_kept_and_relabelled_in_order() -> None:
    dm = DigitsDataModule(image_size=16, classes=[7, 3], num_classes=2)
    assert set(raw(dm, "train")[1]) == {0, 1} and dm.class_names == ["7", "3"]
    full = DigitsDataModule(image_size=16)
    # label 0 is every 7 of the full set, label 1 every 3
    assert ink(dm, 0) == ink(full, 7) and ink(dm, 1) == ink(full, 3)


def test_train_per_class_draws_that_many_per_class_with_the_seed() -> None:
    def draw(seed: int) -> tuple[torch.Tensor, list[int]]:
        return raw(DigitsDataModule(image_size=16, classes=[5, 6, 7], train_per_class=3, seed=seed), "train")

    images, labels = draw(0)
    assert Counter(labels) == {0: 3, 1: 3, 2: 3}
    assert torch.equal(draw(0)[0], images)  # the same seed draws the same images
    assert not torch.equal(draw(1)[0], images)  # another seed, another draw
    # the test split never depends on the draw
    assert torch.equal(
        raw(DigitsDataModule(image_size=16, classes=[5, 6, 7], train_per_class=3, seed=1), "test")[0],
        raw(DigitsDataModule(image_size=16, classes=[5, 6, 7], seed=0), "test")[0],
    )


def test_canvas_places_each_scan_whole_at_a_fixed_random_position() -> None:
    plain, _ = raw(DigitsDataModule(image_size=16), "test")
    placed, _ = raw(DigitsDataModule(image_size=24, canvas=12, seed=3), "test")
    again, _ = raw(DigitsDataModule(image_size=24, canvas=12, seed=4), "test")
    assert placed.shape[1:] == (1, 12, 12) and placed.dtype == torch.uint8
    assert torch.equal(placed, again)  # the same position whatever the run's seed
    # every image is its 8x8 scan, untouched, and nothing else: the ink is the scan's
    assert torch.equal(placed.flatten(1).sum(1), plain.flatten(1).sum(1))
    offsets = set()
    for big, small in zip(placed[:50], plain[:50], strict=True):
        found = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if torch.equal(big[0, top : top + 8, left : left + 8], small[0])
        ]
        assert found, "a scan was altered or cut"
        offsets.add(found[0])
    assert len(offsets) > 5  # positions vary from image to image


def test_canvas_batches_through_the_loaders_at_image_size() -> None:
    dm = DigitsDataModule(image_size=24, canvas=12, batch_size=8)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 24, 24) and labels.shape == (8,)


def test_place_on_canvas_of_the_scans_own_size_is_the_identity() -> None:
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(place_on_canvas(images, 8), images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"canvas": 6}, "data.canvas=6"),
        ({"train_per_class": 1}, "at least 2"),
        ({"classes": [3, 3]}, "distinct digits"),
        ({"classes": [10]}, "distinct digits"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_bad_options_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(image_size=16, **kwargs)
