"""Shapes: an embedded, procedural dataset of filled shapes with masks and boxes, generated on the fly.

Item ``i`` is a pure function of the seed, ``i`` and the arguments: nothing is stored, nothing downloaded.
Each image holds a few non-overlapping shapes (circle, square, triangle and optionally star, hexagon, cross)
painted in colours drawn independently of their class, so a network must learn the class from the outline.
Backgrounds are one dull colour ("plain"), that colour under pixel noise ("noise") or smooth blotches under
noise ("texture"). A target holds the semantic mask (0 background, k + 1 for class k), one binary mask per
object, and each object's box: the tight box of its mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision import tv_tensors

from cnnlab.data.base import ImageDataModule
from cnnlab.samples import BoxLabelsAfterBackground

#: the shapes that can be drawn, usable as ``classes``
KINDS = ("circle", "square", "triangle", "star", "hexagon", "cross")
BACKGROUNDS = ("plain", "noise", "texture")
#: saturated object colours, far from the greyish backgrounds; an object's colour never depends on its class
COLOURS = np.array(
    [(225, 45, 45), (45, 200, 70), (55, 95, 240), (240, 205, 45), (215, 65, 215), (45, 210, 215)],
    dtype=np.float32,
)
PLACEMENT_TRIES = 30  # per object: beyond that the image keeps fewer objects than drawn
GAP = 2.0  # pixels between the circles that enclose two objects, so shapes never touch
NOISE = 10.0  # standard deviation of the pixel noise of "noise" and "texture" backgrounds


def _unit_outline(kind: str) -> np.ndarray:
    """The vertices (K, 2) of a polygon shape centred on 0 and inscribed in the unit circle."""
    if kind in ("square", "triangle", "hexagon"):
        corners = {"square": 4, "triangle": 3, "hexagon": 6}[kind]
        angles = 2 * math.pi * np.arange(corners) / corners
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if kind == "star":
        angles = math.pi * np.arange(10) / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    # a plus sign whose arms are a third of its width, scaled so its corners touch the unit circle
    a, b = 1.0, 1.0 / 3.0
    quarter = np.array([(b, a), (b, b), (a, b)])
    clockwise = np.array([[0.0, -1.0], [1.0, 0.0]])
    cross = np.concatenate([quarter @ np.linalg.matrix_power(clockwise, k) for k in range(4)])
    return cross / math.hypot(a, b)


OUTLINES = {kind: _unit_outline(kind) for kind in KINDS if kind != "circle"}
# the turn that stands a polygon on its base, for rotate=False
UPRIGHT = {"square": math.pi / 4, "triangle": -math.pi / 2, "star": -math.pi / 2, "hexagon": 0, "cross": 0}


class ShapesDataset(Dataset):
    """``length`` images of filled shapes with a mask, boxes, labels and instance masks, made on demand."""

    def __init__(
        self,
        length: int,
        image_size: int = 64,
        classes: Sequence[str] = ("circle", "square", "triangle"),
        objects: tuple[int, int] = (1, 4),
        object_size: tuple[float, float] = (0.15, 0.45),
        background: str = "noise",
        seed: int = 0,
        channels: int = 3,
        rotate: bool = True,
    ) -> None:
        self.length, self.image_size, self.seed = int(length), int(image_size), int(seed)
        self.classes, self.background = tuple(classes), background
        self.channels, self.rotate = channels, rotate
        self.objects = (int(objects[0]), int(objects[1]))
        self.object_size = (float(object_size[0]), float(object_size[1]))
        self._check_arguments()
        # a field of pixel noise drawn once, of which each image takes a window at a random offset: drawing
        # fresh noise per image would take most of the time an image costs
        noise = np.random.default_rng((self.seed, 0)).standard_normal((2 * image_size, 2 * image_size, 3))
        self._noise = (noise * NOISE).astype(np.float32)
        #: object classes: ``labels`` index this list
        self.class_names: list[str] = list(self.classes)
        #: mask classes: index 0 is the background, index k + 1 is ``class_names[k]``
        self.segmentation_class_names: list[str] = ["background", *self.classes]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} is out of range for ShapesDataset of length {self.length}")
        index %= self.length
        rng = np.random.default_rng((self.seed, 1, index))
        size = self.image_size
        canvas = self._background(rng)
        labels, instances, boxes = [], [], []
        for label, centre, radius in self._place(rng):
            instance = self._render(self.classes[label], centre, radius, rng)
            rows, cols = np.flatnonzero(instance.any(1)), np.flatnonzero(instance.any(0))
            if not len(rows):  # a very small shape may cover no pixel centre at all
                continue
            canvas[instance] = COLOURS[rng.integers(len(COLOURS))] + rng.uniform(-25, 25, size=3)
            labels.append(label)
            instances.append(instance)
            # the tight box in pixel edges: the last covered pixel ends one further, as in COCO's boxes
            boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
        if self.background != "plain":
            y, x = rng.integers(0, size + 1, size=2)
            canvas += self._noise[y : y + size, x : x + size]
        pixels = np.clip(canvas, 0, 255).astype(np.uint8)
        if self.channels == 1:
            pixels = np.array(Image.fromarray(pixels).convert("L"))[:, :, None]
        empty = torch.zeros(0, size, size, dtype=torch.bool)
        masks = torch.from_numpy(np.stack(instances)) if instances else empty
        label_tensor = torch.tensor(labels, dtype=torch.int64)
        semantic = (masks * (label_tensor + 1)[:, None, None]).sum(0)
        target = {
            "mask": tv_tensors.Mask(semantic.to(torch.int64)),
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(size, size),
            ),
            "labels": label_tensor,
            "instance_masks": tv_tensors.Mask(masks.to(torch.uint8)),
        }
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
        return image, target

    # --- helpers -----------------------------------------------------------------------------------------

    def _check_arguments(self) -> None:
        unknown = [c for c in self.classes if c not in KINDS]
        if not self.classes or unknown or len(set(self.classes)) != len(self.classes):
            raise ValueError(
                f"classes={list(self.classes)}: name one or more distinct shapes among {', '.join(KINDS)}"
            )
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background={self.background!r}: choose one of {', '.join(BACKGROUNDS)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels}: shapes are drawn in 1 (grey) or 3 (RGB) channels")
        if self.length < 1 or self.image_size < 8:
            raise ValueError(
                f"length={self.length}, image_size={self.image_size}: the dataset needs at least one image "
                "of at least 8 pixels"
            )
        low, high = self.objects
        if not 0 <= low <= high:
            raise ValueError(
                f"objects={self.objects}: give (fewest, most) objects per image, 0 <= fewest <= most"
            )
        small, large = self.object_size
        if not 0 < small <= large <= 1:
            raise ValueError(
                f"object_size={self.object_size}: give (smallest, largest) object diameters as fractions of "
                "the image size, 0 < smallest <= largest <= 1"
            )

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        size = self.image_size
        # dull, dark-to-middle greys with a slight tint, so that every object colour stands out
        base = rng.uniform(25, 110) + rng.uniform(-12, 12, size=3)
        canvas = np.empty((size, size, 3), dtype=np.float32)
        canvas[:] = base.astype(np.float32)
        if self.background == "texture":
            coarse = rng.uniform(0, 70, size=(6, 6, 3)).astype(np.uint8)
            blotches = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
            canvas += np.asarray(blotches, dtype=np.float32) - 35.0
        return canvas

    def _place(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray, float]]:
        """(label, centre, radius) of objects whose enclosing circles keep a gap: rejection sampling."""
        size = self.image_size
        count = int(rng.integers(self.objects[0], self.objects[1] + 1))
        placed: list[tuple[int, np.ndarray, float]] = []
        for _ in range(count):
            label = int(rng.integers(len(self.classes)))
            radius = rng.uniform(*self.object_size) * size / 2
            for _ in range(PLACEMENT_TRIES):
                centre = rng.uniform(radius, size - radius, size=2)
                if all(np.hypot(*(centre - c)) > radius + r + GAP for _, c, r in placed):
                    placed.append((label, centre, radius))
                    break
        return placed

    def _render(self, kind: str, centre: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
        """The boolean (H, W) mask of one shape."""
        size = self.image_size
        layer = Image.new("1", (size, size))
        draw = ImageDraw.Draw(layer)
        # pixel i covers [i, i + 1): PIL fills the pixels whose index lies in the shape, so shift by half
        x, y = centre - 0.5
        if kind == "circle":
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=1)
        else:
            angle = rng.uniform(0, 2 * math.pi) if self.rotate else UPRIGHT[kind]
            turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            points = OUTLINES[kind] @ turn.T * radius + (x, y)
            draw.polygon([tuple(p) for p in points], fill=1)
        return np.asarray(layer, dtype=bool)


class ShapesDataModule(ImageDataModule):
    """The embedded shapes: masks and boxes for segmentation and detection, offline and seeded.

    Class 0 is the background; class k + 1 is ``classes[k]``, in masks and box labels alike. The training pool
    and the test set are drawn from generators of their own (``generator_seed``), the same in every run; the
    run's seed carves the validation split and orders the batches.
    """

    targets = ("mask", "boxes")

    def __init__(
        self,
        classes: Sequence[str] = ("circle", "square", "triangle"),
        train_size: int = 1000,
        test_size: int = 200,
        objects: Sequence[int] = (1, 4),
        object_size: Sequence[float] = (0.15, 0.45),
        background: str = "noise",
        generator_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("num_classes", len(classes) + 1)
        kwargs.setdefault("in_channels", 3)
        kwargs.setdefault("image_size", 64)
        super().__init__(**kwargs)
        for key, value in (("train_size", train_size), ("test_size", test_size)):
            if int(value) < 1:
                raise ValueError(f"data.{key}={value}: give a number of images of at least 1")
        self.options = {
            "image_size": self.image_size,
            "classes": tuple(classes),
            "objects": (int(objects[0]), int(objects[1])),
            "object_size": (float(object_size[0]), float(object_size[1])),
            "background": background,
            "channels": self.in_channels,
        }
        self.sizes = {"train": int(train_size), "test": int(test_size)}
        self.generator_seed = int(generator_seed)
        self._set_class_names(["background", *classes])

    def load_split(self, split: str) -> Dataset:
        # train and test come from different generators: no test image is ever a training image
        seed = self.generator_seed * 2 + (split == "test")
        return BoxLabelsAfterBackground(ShapesDataset(self.sizes[split], seed=seed, **self.options))
