"""Anomaly detectors for production: an anomaly map and score per image, and the decision by the threshold
chosen on validation (a buffer of the exported graph).

``anomaly_map`` and ``image_scores`` are the one implementation of the score: the anomaly task trains and
evaluates with them, the exported model runs them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.errors import CheckpointError
from cnnlab.serving import autoencoder, draw
from cnnlab.serving.preprocess import crop_region

OUTPUTS = {
    "scores": "each image's anomaly score (N,)",
    "maps": "each pixel's squared reconstruction error, averaged over channels (N, image_size, image_size)",
    "anomalous": "score >= the threshold chosen on validation (N,), bool",
}
#: how a map becomes one score per image: its mean, its maximum, or the mean of its highest pixels
REDUCTIONS = ("mean", "max", "topk")


def anomaly_map(images: Tensor, reconstructions: Tensor) -> Tensor:
    """The squared reconstruction error of each pixel, averaged over channels (N, H, W), in [0, 1]."""
    return (reconstructions - images).pow(2).mean(dim=1)


def image_scores(maps: Tensor, reduction: str, top_fraction: float) -> Tensor:
    """One anomaly score per image (N,) from its map: mean, max, or ``topk`` (mean of the top fraction)."""
    flat = maps.flatten(1)
    if reduction == "max":
        return flat.amax(dim=1)
    if reduction == "topk":
        k = max(1, int(round(flat.shape[1] * top_fraction)))
        return flat.topk(k, dim=1).values.mean(dim=1)
    return flat.mean(dim=1)


class Exported(autoencoder.Exported):
    """Preprocessing + autoencoder + anomaly map, score and decision."""

    outputs = ("scores", "maps", "anomalous")

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        if contract.get("threshold") is None:
            raise CheckpointError(
                "the checkpoint carries no anomaly threshold: it is chosen at the end of each validation "
                "epoch, so export a checkpoint written after one (checkpoints/best.ckpt)"
            )
        super().__init__(net, contract)
        self.score = str(contract.get("score", "mean"))
        self.top_fraction = float(contract.get("top_fraction", 0.01))
        self.register_buffer("threshold", torch.tensor(float(contract["threshold"])))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        x = self.preprocess(images)
        maps = anomaly_map(x, self.net(x))
        scores = image_scores(maps, self.score, self.top_fraction)
        return scores, maps, scores >= self.threshold


def wrap(net: nn.Module, contract: dict[str, Any]) -> Exported:
    """The network ready for export."""
    return Exported(net, contract)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``predict`` for anomaly detectors."""
    parser.add_argument(
        "--threshold", type=float, default=None, help="flag scores >= this (default: the model's own)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write each anomaly map as <out>/<image name>.png (white = high)",
    )


def check_options(options: dict[str, Any]) -> None:
    """Refuse a threshold no score can be compared with."""
    threshold = options.get("threshold")
    if threshold is not None and not threshold >= 0:
        raise ValueError(f"--threshold {threshold}: anomaly scores are squared errors, give a value >= 0")


def records(
    outputs: dict[str, Tensor],
    contract: dict[str, Any],
    sizes: list[tuple[int, int]],
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Per image: its score, the decision (by ``options['threshold']`` when given, else the model's), the
    threshold used, its map and the region of the image the map covers."""
    given = options.get("threshold")
    found = []
    for n, score in enumerate(outputs["scores"].tolist()):
        height, width = sizes[n]
        threshold = float(contract["threshold"]) if given is None else float(given)
        anomalous = bool(outputs["anomalous"][n]) if given is None else score >= threshold
        found.append(
            {
                "task": "anomaly",
                "score": round(score, 8),
                "anomalous": anomalous,
                "threshold": threshold,
                "threshold_source": "chosen on validation" if given is None else "given",
                "map": torch.round(outputs["maps"][n].float(), decimals=6).tolist(),
                "region": [round(v, 2) for v in crop_region(height, width, contract)],
            }
        )
    return found


def order(records: list[dict[str, Any]]) -> list[int]:
    """Highest score first."""
    return sorted(range(len(records)), key=lambda i: -records[i]["score"])


def line(record: dict[str, Any]) -> str:
    """``score 0.012345 ANOMALOUS``."""
    return f"score {record['score']:.6f} {'ANOMALOUS' if record['anomalous'] else 'normal'}"


def footer(records: list[dict[str, Any]], options: dict[str, Any]) -> str | None:
    """The threshold used and how many images reached it."""
    if not records:
        return None
    flagged = sum(r["anomalous"] for r in records)
    first = records[0]
    return (
        f"threshold {first['threshold']:.6f} ({first['threshold_source']}): "
        f"{flagged} of {len(records)} images anomalous"
    )


def heat_values(record: dict[str, Any]) -> Any:
    """The map on one scale for every image and model: the root of the squared error (off by 1: white)."""
    return torch.tensor(record["map"]).clamp(0, 1).sqrt().numpy()


def picture(record: dict[str, Any], image: Tensor) -> Any:
    """The image with its anomaly map laid over the part the network saw."""
    return draw.heat(image, heat_values(record), record["region"])


def save(
    record: dict[str, Any], image: Tensor, folder: Path, stem: str, options: dict[str, Any]
) -> list[Path]:
    """``<stem>.png``: the anomaly map at the network's size, in grey (white = high)."""
    path = folder / f"{stem}.png"
    path.write_bytes(draw.png(draw.grey(heat_values(record))))
    return [path]
