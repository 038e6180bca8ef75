"""Detectors for production: one image of any size in, its boxes, labels and scores out; predict draws them.

The exported graph returns every detection the network keeps (its own ``score_thresh``, then non-maximum
suppression) and flags those scoring at least the model's ``score_threshold`` (``task.score_threshold``, a
buffer); a threshold given to ``predict`` or the app replaces the flag. The graphs call torchvision's
operators (non-maximum suppression): whatever loads a ``.pt2`` or ``.pt`` imports torchvision first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torchvision.ops.boxes
from torch import Tensor, nn

from cnnlab.serving import draw

OUTPUTS = {
    "boxes": "boxes (K, 4) as x1, y1, x2, y2 in the input image's pixels, best score first",
    "scores": "their scores (K,)",
    "labels": "their classes (K,), indexing class_names",
    "keep": "score >= the model's score_threshold (K,), bool",
}
#: where predict writes the drawn images and their JSON when no --out is given: beside the model
DEFAULT_OUT = "predictions"
#: one image per call: its detections are a list of their own length
BATCH = 1
#: torchvision's detectors size their resizing, padding and anchor grids by the image's own shape, which
#: torch.export and the ONNX exporter fix; their graphs take the training size, and the loader resizes
#: other images to it and maps the boxes back (TorchScript keeps any size)
DYNAMIC = False
INPUT = (
    "one float image (1, C, H, W) in [0, 1]: any size in TorchScript, the size in input_shape in .pt2 and "
    ".onnx (predict and the app resize to it and map the boxes back)"
)


class Exported(nn.Module):
    """The detector (which scales, resizes and maps boxes back by itself) and the score threshold, for a
    batch of one float image (1, C, H, W) in [0, 1]."""

    outputs = ("boxes", "scores", "labels", "keep")

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("score_threshold", torch.tensor(float(contract.get("score_threshold", 0.5))))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        found = self.net.detect([images[0]])[0]
        scores = found["scores"]
        return found["boxes"], scores, found["labels"], scores >= self.score_threshold


def wrap(net: nn.Module, contract: dict[str, Any]) -> Exported:
    """The network ready for export."""
    return Exported(net, contract)


def rescale(outputs: dict[str, Tensor], given: tuple[int, int], graph: tuple[int, int]) -> dict[str, Tensor]:
    """Boxes found on the image resized to the graph's size, in the given image's pixels."""
    scale = torch.tensor([given[1] / graph[1], given[0] / graph[0]] * 2)
    return {**outputs, "boxes": outputs["boxes"] * scale}


def _branch_free_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    # torchvision's batched_nms picks an implementation by the number of boxes and returns early for none:
    # data-dependent branches that torch.export and the ONNX exporter cannot follow. The same result without
    # them: shift each class's boxes apart so that boxes of different classes never overlap, then one NMS.
    top = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (top + 1)
    return torchvision.ops.nms(boxes + offsets[:, None], scores, iou_threshold)


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """While a graph is exported (torch.export, ONNX): torchvision's detectors use the branch-free NMS."""
    with mock.patch.object(torchvision.ops.boxes, "batched_nms", _branch_free_batched_nms):
        yield


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for detectors."""
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="keep detections scoring at least this, in [0, 1] (default: the model's score_threshold)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the drawn images and JSON files (default: predictions/ beside the model)",
    )


def check_options(options: dict[str, Any]) -> None:
    """Refuse a threshold that no score can reach or that every score passes unasked."""
    threshold = options.get("threshold")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"--threshold {threshold}: detection scores lie in [0, 1]; give a value in that range"
        )


def records(
    outputs: dict[str, Tensor],
    contract: dict[str, Any],
    sizes: list[tuple[int, int]],
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """The image's detections, best first: those the model flags, or those reaching the threshold given."""
    names = list(contract["class_names"])
    given = options.get("threshold")
    scores = outputs["scores"]
    keep = outputs["keep"].bool() if given is None else scores >= float(given)
    detections = [
        {
            "class": names[label] if 0 <= label < len(names) else str(label),
            "index": label,
            "score": round(score, 5),
            "box": [round(v, 2) for v in box],
        }
        for box, label, score in zip(
            outputs["boxes"][keep].tolist(),
            outputs["labels"][keep].tolist(),
            scores[keep].tolist(),
            strict=True,
        )
    ]
    threshold = float(contract.get("score_threshold", 0.5)) if given is None else float(given)
    return [
        {"task": "detection", "threshold": threshold, "box_format": "xyxy pixels", "detections": detections}
    ]


def line(record: dict[str, Any]) -> str:
    """``3 boxes: 2 person, 1 dog`` (most frequent class first), or ``0 boxes``."""
    counts = Counter(d["class"] for d in record["detections"])
    count = sum(counts.values())
    text = f"{count} box" + ("" if count == 1 else "es")
    return text + (": " + ", ".join(f"{n} {name}" for name, n in counts.most_common()) if counts else "")


def picture(record: dict[str, Any], image: Tensor) -> Any:
    """The image with its boxes outlined in their classes' colours and captioned 'class score'."""
    found = record["detections"]
    by_index = {d["index"]: d["class"] for d in found}
    names = [by_index.get(i, str(i)) for i in range(max(by_index, default=-1) + 1)]
    labels = [d["index"] for d in found]
    return draw.boxes(image, [d["box"] for d in found], labels, names, [d["score"] for d in found])


def save(
    record: dict[str, Any], image: Tensor, folder: Path, stem: str, options: dict[str, Any]
) -> list[Path]:
    """``<stem>.png`` (the boxes drawn) and ``<stem>.json`` (the record)."""
    written = [folder / f"{stem}.png", folder / f"{stem}.json"]
    written[0].write_bytes(draw.png(picture(record, image)))
    written[1].write_text(json.dumps(record, indent=2) + "\n")
    return written


def parity(expected: list[dict[str, Tensor]], got: list[dict[str, Tensor]]) -> dict[str, float]:
    """Detections compared as a person would: each one the module keeps (score >= score_threshold) matched
    to the exported detection of its class that overlaps it most (NMS may order tied scores either way).
    The largest coordinate and score differences of the matches, the share of the module's detections
    without a match (IoU >= 0.5), the largest difference in how many are kept, and how many were compared."""
    boxes = scores = unmatched = total = count = 0.0
    for want, have in zip(expected, got, strict=True):
        count = max(count, abs(int(want["keep"].sum()) - int(have["keep"].sum())))
        kept = want["keep"].bool()
        for box, label, score in zip(
            want["boxes"][kept], want["labels"][kept], want["scores"][kept], strict=True
        ):
            total += 1
            same = have["labels"] == label
            if not bool(same.any()):
                unmatched += 1
                continue
            candidates = have["boxes"][same].float()
            overlap = torchvision.ops.box_iou(box[None].float(), candidates)[0]
            # two boxes of no area (a side clipped to nothing) have no IoU, 0 / 0: the same box where their
            # corners coincide within half a pixel, else none
            coincide = (candidates - box.float()).abs().amax(dim=1) <= 0.5
            overlap = torch.where(overlap.isnan(), coincide.float(), overlap)
            best = int(overlap.argmax())
            if float(overlap[best]) < 0.5:
                unmatched += 1
                continue
            boxes = max(boxes, float((have["boxes"][same][best] - box).abs().max()))
            scores = max(scores, abs(float(have["scores"][same][best]) - float(score)))
    return {
        "boxes": float(f"{boxes:.3g}"),
        "scores": float(f"{scores:.3g}"),
        "unmatched": float(f"{unmatched / total:.3g}") if total else 0.0,
        "count": count,
        "compared": total,
    }
