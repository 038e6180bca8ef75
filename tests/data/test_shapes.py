"""The embedded shapes dataset: reproducible items whose masks, boxes and labels agree with the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from cnnlab.data.shapes import COLOURS, KINDS, ShapesDataset


def tight_box(instance: torch.Tensor) -> list[float]:
    rows, cols = instance.any(1).nonzero()[:, 0], instance.any(0).nonzero()[:, 0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def test_sample_contract() -> None:
    dataset = ShapesDataset(10, image_size=48)
    assert len(dataset) == 10
    assert dataset.class_names == ["circle", "square", "triangle"]
    assert dataset.segmentation_class_names == ["background", "circle", "square", "triangle"]
    image, target = dataset[3]
    n = len(target["labels"])
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 48, 48) and image.dtype == torch.uint8
    assert isinstance(target["mask"], tv_tensors.Mask) and target["mask"].shape == (48, 48)
    assert target["mask"].dtype == torch.int64
    boxes = target["boxes"]
    assert (
        isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.shape == (n, 4) and boxes.dtype == torch.float32
    )
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (48, 48)
    assert target["labels"].dtype == torch.int64
    masks = target["instance_masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.shape == (n, 48, 48) and masks.dtype == torch.uint8


def test_same_seed_same_items_other_seed_other_items() -> None:
    first, again, other = ShapesDataset(5, seed=3), ShapesDataset(5, seed=3), ShapesDataset(5, seed=4)
    for i in range(5):
        (image, target), (image2, target2) = first[i], again[i]
        assert torch.equal(image, image2) and torch.equal(target["boxes"], target2["boxes"])
        assert torch.equal(target["mask"], target2["mask"]) and torch.equal(first[i][0], image)
    assert not torch.equal(first[0][0], first[1][0])
    assert all(not torch.equal(first[i][0], other[i][0]) for i in range(5))


@pytest.mark.parametrize("background", ["plain", "noise", "texture"])
def test_masks_boxes_and_labels_agree(background: str) -> None:
    classes = KINDS  # every shape kind, extra ones included
    dataset = ShapesDataset(40, image_size=64, classes=classes, objects=(1, 5), background=background)
    counts = []
    for i in range(len(dataset)):
        _, target = dataset[i]
        masks, labels, mask = target["instance_masks"].bool(), target["labels"], target["mask"]
        counts.append(len(labels))
        assert 1 <= len(labels) <= 5 and ((labels >= 0) & (labels < len(classes))).all()
        assert (masks.sum(0) <= 1).all(), "objects overlap"
        for instance, label, box in zip(masks, labels, target["boxes"], strict=True):
            assert instance.any()
            assert box.tolist() == tight_box(instance)
            assert (mask[instance] == label + 1).all()
        assert (mask[~masks.any(0)] == 0).all()
    assert len(set(counts)) > 1


def test_object_colour_does_not_depend_on_class() -> None:
    dataset = ShapesDataset(200, background="plain", objects=(2, 3))
    colours_of: dict[int, set[int]] = {k: set() for k in range(3)}
    for i in range(len(dataset)):
        image, target = dataset[i]
        for instance, label in zip(target["instance_masks"].bool(), target["labels"], strict=True):
            mean = image[:, instance].float().mean(1).numpy()
            colours_of[int(label)].add(int(np.linalg.norm(COLOURS - mean, axis=1).argmin()))
    assert all(len(colours) > 1 for colours in colours_of.values()), colours_of


def test_crowded_images_keep_fewer_objects_without_overlap() -> None:
    dataset = ShapesDataset(10, image_size=32, objects=(6, 6), object_size=(0.6, 0.6))
    for i in range(len(dataset)):
        masks = dataset[i][1]["instance_masks"]
        assert 1 <= len(masks) < 6 and (masks.sum(0) <= 1).all()


def test_one_channel_and_unrotated_square() -> None:
    image, target = ShapesDataset(3, classes=("square",), channels=1, rotate=False, background="plain")[0]
    assert image.shape == (1, 64, 64)
    for instance, box in zip(target["instance_masks"].bool(), target["boxes"], strict=True):
        x0, y0, x1, y1 = (int(v) for v in box)
        assert instance[y0:y1, x0:x1].all()  # an upright square fills its box


def test_zero_objects_give_empty_targets() -> None:
    _, target = ShapesDataset(2, objects=(0, 0))[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["instance_masks"].shape == (0, 64, 64) and not target["mask"].any()


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"classes": ("circle", "blob")}, "circle, square, triangle, star, hexagon, cross"),
        ({"background": "stripes"}, "plain, noise, texture"),
        ({"objects": (3, 1)}, "fewest"),
        ({"object_size": (0.5, 1.5)}, "fractions of the image size"),
        ({"channels": 2}, "1 (grey) or 3 (RGB)"),
    ],
)
def test_bad_arguments_name_the_valid_choices(arguments: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ShapesDataset(4, **arguments)


def test_index_out_of_range() -> None:
    with pytest.raises(IndexError, match="out of range"):
        ShapesDataset(4)[4]
