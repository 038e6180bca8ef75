"""Samples carry their targets through joint transforms; collate functions make the batches tasks expect."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cnnlab.data import transforms as T
from cnnlab.samples import (
    IGNORE_INDEX,
    SampleDataset,
    SampleSpec,
    label_collate,
    list_collate,
    pad_collate,
)


def rectangle_sample(h: int = 40, w: int = 60) -> tuple[tv_tensors.Image, dict]:
    """A dark image with one bright rectangle; its mask (class 1) and box say where it is."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[:, 10:25, 35:55] = 255
    mask = torch.zeros(h, w, dtype=torch.int64)
    mask[10:25, 35:55] = 1
    boxes = tv_tensors.BoundingBoxes([[35, 10, 55, 25]], format="XYXY", canvas_size=(h, w))
    return tv_tensors.Image(image), {
        "mask": tv_tensors.Mask(mask),
        "boxes": boxes,
        "labels": torch.tensor([0]),
    }


def tight_box(region: torch.Tensor) -> list[float]:
    rows, cols = region.any(1).nonzero(), region.any(0).nonzero()
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


@pytest.mark.parametrize("seed", range(6))
def test_box_and_mask_stay_on_the_pixels_through_flip_resize_and_crop(seed: int) -> None:
    def preset(image_size: int, resize_size: int) -> list:
        return [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.Resize(resize_size, antialias=True),
            v2.RandomCrop(image_size, fill=T.FILL),
        ]

    transform = T.train_transform(preset, 48, 64, None, None, geometry="resize")
    dataset = SampleDataset([rectangle_sample()], transform, keys=("mask", "boxes", "labels"))
    torch.manual_seed(seed)
    image, target = dataset[0]
    bright = image.as_subclass(torch.Tensor).mean(0) > 0.5
    mask = target["mask"].as_subclass(torch.Tensor)
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    # nearest-neighbour mask and antialiased image may differ by a pixel at the rectangle's rim, no more
    assert (bright != (mask == 1)).sum() <= 2 * (bright.sum(0) > 0).sum() + 2 * (bright.sum(1) > 0).sum()
    if (mask == 1).any():
        box = target["boxes"][0].tolist()
        assert box == pytest.approx(tight_box(mask == 1), abs=1.0)


def test_padding_fills_masks_with_the_ignored_class() -> None:
    image, target = rectangle_sample(20, 30)
    out_image, out = v2.RandomCrop(40, pad_if_needed=True, fill=T.FILL)(image, target)
    assert out_image.shape[-2:] == (40, 40)
    assert (out["mask"] == IGNORE_INDEX).sum() == 40 * 40 - 20 * 30


def test_sixteen_bit_images_scale_to_the_unit_range_in_training_too() -> None:
    raw = tv_tensors.Image(torch.full((1, 8, 8), 65535).to(torch.uint16))
    augmented = T.train_transform(T.basic, 8, 8, None, None)(raw)
    plain = T.eval_transform(8, 8, None, None)(raw)
    assert augmented.dtype == plain.dtype == torch.float32
    assert plain.max() == pytest.approx(1.0) and augmented.max() == pytest.approx(1.0)


def test_only_the_keys_a_task_reads_are_kept_and_labels_can_flag_anomalies() -> None:
    items = [(torch.zeros(1, 4, 4, dtype=torch.uint8), label) for label in (0, 3, 1)]
    dataset = SampleDataset(
        items, T.eval_transform(4, 4, None, None), keys=("label", "anomaly"), normal_classes=[0, 1]
    )
    assert [dataset[i][1] for i in range(3)] == [
        {"label": 0, "anomaly": 0},
        {"label": 3, "anomaly": 1},
        {"label": 1, "anomaly": 0},
    ]
    assert SampleDataset(items, lambda *x: x, keys=())[0][1] == {}


def test_collates_give_stacked_padded_or_listed_batches() -> None:
    small, large = rectangle_sample(20, 30), rectangle_sample(26, 24)
    samples = [
        (small[0].float(), {"mask": small[1]["mask"], "label": 2}),
        (large[0].float(), {"mask": large[1]["mask"], "label": 5}),
    ]
    images, targets = pad_collate(samples)
    assert images.shape == (2, 3, 26, 30) and targets["mask"].shape == (2, 26, 30)
    assert (targets["mask"][0, 20:] == IGNORE_INDEX).all() and (
        targets["mask"][1, :, 24:] == IGNORE_INDEX
    ).all()
    assert torch.equal(targets["label"], torch.tensor([2, 5]))
    listed, boxes = list_collate([small, large])
    assert [i.shape for i in listed] == [(3, 20, 30), (3, 26, 24)] and len(boxes) == 2
    stacked, labels = label_collate([(torch.zeros(1, 4, 4), {"label": 3})] * 2)
    assert stacked.shape == (2, 1, 4, 4) and labels.tolist() == [3, 3]


def test_a_spec_lists_the_keys_it_reads() -> None:
    assert SampleSpec(needs=("mask",), wants=("label",)).keys() == ("mask", "label")
