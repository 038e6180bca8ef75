"""Detectors for production: one image of any size in, its boxes, labels and scores out; predict draws them.

The exported model keeps the detections scoring at least its ``score_threshold`` (chosen at training time,
``task.score_threshold``) or the threshold passed to it. ``predict`` writes each image with its boxes drawn
and a JSON of them into ``--out`` (default: ``predictions/`` beside the model) and prints a line per image.
The TorchScript file calls torchvision's operators (non-maximum suppression, box IoU): whatever loads it
imports torchvision first, which registers them.
"""

import argparse
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from cnnlab.data.io import to_unit_range
from cnnlab.serving import classification

INPUT = "one image (C,H,W) of any size: uint8, uint16 (16-bit files) or float in [0, 1]"
OUTPUT = (
    "boxes (K, 4) as x1, y1, x2, y2 in the input image's pixels, scores (K,) and labels (K,) indexing "
    "class_names, for the detections scoring at least score_threshold (or the threshold passed)"
)
#: box colours by class index (cycled), distinct on photos and on the shapes' dull backgrounds
PALETTE = [
    (255, 64, 64),
    (64, 224, 64),
    (64, 128, 255),
    (255, 208, 0),
    (224, 64, 224),
    (0, 224, 224),
    (255, 144, 0),
    (160, 96, 255),
    (160, 255, 96),
    (255, 255, 255),
]


class Exported(classification.Exported):
    """Scale to [0, 1], the detector (which resizes and maps boxes back), and the score threshold.

    The classifier's wrapper with another output: the same preprocessing (the contract's geometry is
    ``none`` and it has no mean and std: detectors resize and normalise by themselves) and attributes.
    """

    # class-level annotations (real types, not postponed strings): TorchScript types the attributes from them
    score_threshold: float

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__(net, contract)
        self.serving = __name__
        self.score_threshold = float(contract.get("score_threshold", 0.5))

    def forward(self, image: Tensor, threshold: float | None = None) -> dict[str, Tensor]:
        """The detections of one image (C, H, W) scoring at least ``threshold`` (default: the model's)."""
        return self.detect([image], threshold)[0]

    @torch.jit.export
    def detect(self, images: list[Tensor], threshold: float | None = None) -> list[dict[str, Tensor]]:
        """The detections of each image of a list (sizes may differ), best score first."""
        cut = self.score_threshold if threshold is None else threshold
        found = self.net.detect([self.preprocess(image) for image in images])
        kept: list[dict[str, Tensor]] = []
        for detections in found:
            keep = detections["scores"] >= cut
            kept.append({key: value[keep] for key, value in detections.items()})
        return kept


def draw(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    class_names: list[str],
    scores: Tensor | None = None,
    width: int = 2,
) -> Tensor:
    """The image (C, H, W; any dtype) as RGB uint8 with each box outlined and captioned 'class score'."""
    pixels = to_unit_range(image)
    pixels = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    if len(boxes) == 0:
        return pixels
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels.tolist()]
    if scores is not None:
        names = [f"{name} {score:.2f}" for name, score in zip(names, scores.tolist(), strict=True)]
    colours = [PALETTE[i % len(PALETTE)] for i in labels.tolist()]
    # captions in black on the box's colour: legible on any picture, even on an object of that colour
    return draw_bounding_boxes(pixels, boxes.float(), names, colours, width=width, fill_labels=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for detectors."""
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="keep detections scoring at least this (default: the model's score_threshold)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the drawn images and JSON files (default: predictions/ beside the model)",
    )


def show(
    model: torch.jit.ScriptModule, images: Iterable[tuple[Path, Tensor]], args: argparse.Namespace
) -> None:
    """Write ``<stem>.png`` (boxes drawn) and ``<stem>.json`` per image; print ``path: N boxes (classes)``."""
    out = args.out or Path(args.model).parent / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    threshold = float(model.score_threshold if args.threshold is None else args.threshold)
    names: list[str] = list(model.class_names)
    used: set[str] = set()
    for path, image in images:
        with torch.inference_mode():
            found = model(image, threshold)
        stem = unique_stem(path, used)
        drawn = draw(image, found["boxes"], found["labels"], names, found["scores"])
        F.to_pil_image(drawn).save(out / f"{stem}.png")
        (out / f"{stem}.json").write_text(
            json.dumps(as_record(path, found, names, threshold), indent=2) + "\n"
        )
        print(f"{path}: {summary(found['labels'], names)}")


def as_record(path: Path, found: dict[str, Tensor], names: list[str], threshold: float) -> dict[str, Any]:
    """What the JSON file of an image holds: its path, the threshold and each detection."""
    detections = [
        {
            "label": names[label],
            "label_index": label,
            "score": round(score, 5),
            "box": [round(v, 2) for v in box],
        }
        for box, label, score in zip(
            found["boxes"].tolist(), found["labels"].tolist(), found["scores"].tolist(), strict=True
        )
    ]
    return {"image": str(path), "threshold": threshold, "box_format": "xyxy pixels", "detections": detections}


def summary(labels: Tensor, names: list[str]) -> str:
    """'3 boxes: 2 person, 1 dog' (most frequent class first), or '0 boxes'."""
    counts = Counter(names[i] for i in labels.tolist())
    count = sum(counts.values())
    text = f"{count} box" + ("" if count == 1 else "es")
    return text + (": " + ", ".join(f"{n} {name}" for name, n in counts.most_common()) if counts else "")


def unique_stem(path: Path, used: set[str]) -> str:
    """The file's stem, with a number added when an earlier image of this run had the same one."""
    stem, number = path.stem, 1
    while stem in used:
        number += 1
        stem = f"{path.stem}_{number}"
    used.add(stem)
    return stem
