"""Boxes made to fit their image when annotations are read: clipped to it, those left without area dropped.

Labelling tools let a box reach past the image's edge, and annotation files hold boxes of no area or wholly
outside the picture. The detection readers (COCO, VOC, YOLO) pass every box of every split through
``clip_and_drop`` as they read the annotations, so that training, validation and test see the same boxes
whatever augmentation runs, and a ``BoxRepairs`` tally logs one line per annotation file or folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, UnidentifiedImageError

from cnnlab.data.io import ImageReadError

log = logging.getLogger(__name__)


def clip_and_drop(
    boxes: ArrayLike, width: ArrayLike, height: ArrayLike, atol: float = 0.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Boxes (N, 4) XYXY clipped to [0, width] x [0, height] less those left with no width or height, the
    mask of the kept ones, and how many kept ones the clipping moved by more than ``atol``.

    ``width`` and ``height`` are one image's or one per box (N,).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    width = np.asarray(width, dtype=np.float32).reshape(-1, 1)
    height = np.asarray(height, dtype=np.float32).reshape(-1, 1)
    clipped = np.empty_like(boxes)
    clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    # a NaN coordinate fails both comparisons: such a box is dropped too
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    moved = (np.abs(clipped - boxes) > atol).any(axis=1) & keep
    return clipped[keep], keep, int(moved.sum())


@dataclass
class BoxRepairs:
    """How many boxes of one annotation file or folder were read, clipped and dropped."""

    boxes: int = 0
    clipped: int = 0
    dropped: int = 0

    def fit(
        self, boxes: ArrayLike, width: ArrayLike, height: ArrayLike, *per_box: np.ndarray, atol: float = 0.0
    ) -> tuple[np.ndarray, ...]:
        """``clip_and_drop``'s boxes, then each of ``per_box`` (labels, flags) without the dropped boxes."""
        kept, keep, clipped = clip_and_drop(boxes, width, height, atol)
        self.boxes += len(keep)
        self.clipped += clipped
        self.dropped += len(keep) - len(kept)
        return (kept, *(np.asarray(values)[keep] for values in per_box))

    def log(self, source: str | Path) -> None:
        """One warning line naming ``source`` when any box was clipped or dropped."""
        if self.clipped or self.dropped:
            log.warning(
                "data: %s: of %d boxes, clipped %d that reached outside their image and dropped %d with no "
                "area inside it (zero or negative width or height, or wholly outside)",
                source,
                self.boxes,
                self.clipped,
                self.dropped,
            )


def header_size(path: str | Path) -> tuple[int, int]:
    """The width and height of an image file, from its header (the pixels are not decoded)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: unreadable image ({err})") from err
