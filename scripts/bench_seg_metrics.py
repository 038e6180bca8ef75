"""What segmentation's metric updates cost a step: torchmetrics' mIoU, Dice and pixel accuracy (with their
input checks, and ``unchecked``) against cnnlab's one pixel confusion matrix (``PixelScores``).

    python scripts/bench_seg_metrics.py [--sizes 64 128 256] [--batch 8] [--classes 21] [--device cpu]

Each side updates on the same random class maps (10% of the pixels ignored); the best of 3 rounds of 20
updates is printed per size, with whether the two give the same values.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from cnnlab.samples import IGNORE_INDEX
from cnnlab.tasks.segmentation import PixelScores


def torchmetrics_three(classes: int, checks: bool) -> MetricCollection:
    """The three metrics as torchmetrics computes them, each counting the pixels on its own."""
    options = {"ignore_index": IGNORE_INDEX, "validate_args": checks}
    return MetricCollection(
        {
            "miou": MulticlassJaccardIndex(classes, average="macro", **options),
            "dice": MulticlassF1Score(classes, average="macro", **options),
            "pixel_acc": MulticlassAccuracy(classes, average="micro", **options),
        },
        compute_groups=False,
    )


def seconds_per_update(
    make: Callable[[], MetricCollection], preds: torch.Tensor, mask: torch.Tensor
) -> float:
    best = float("inf")
    for _ in range(3):
        metrics = make().to(preds.device)
        metrics.update(preds, mask)  # the first call allocates
        sync = torch.cuda.synchronize if preds.is_cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(20):
            metrics.update(preds, mask)
        sync()
        best = min(best, (time.perf_counter() - start) / 20)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.classes < 2 or args.batch < 1 or min(args.sizes) < 1:
        parser.error("--classes: at least 2; --batch and --sizes: at least 1")
    k = args.classes
    sides = {
        "torchmetrics": lambda: torchmetrics_three(k, True),
        "torchmetrics unchecked": lambda: torchmetrics_three(k, False),
        "PixelScores": lambda: MetricCollection({"pixels": PixelScores(k, ignore_index=IGNORE_INDEX)}),
    }
    print(f"{args.batch} masks of {k} classes on {args.device}; the time of an update, best of 3 x 20")
    for size in args.sizes:
        generator = torch.Generator().manual_seed(size)
        preds = torch.randint(0, k, (args.batch, size, size), generator=generator)
        mask = torch.randint(0, k, (args.batch, size, size), generator=generator)
        mask[torch.rand(mask.shape, generator=generator) < 0.1] = IGNORE_INDEX
        preds, mask = preds.to(args.device), mask.to(args.device)
        times = {name: seconds_per_update(make, preds, mask) for name, make in sides.items()}
        theirs, ours = (
            sides["torchmetrics"]().to(args.device),
            sides["PixelScores"]().to(args.device),
        )
        theirs.update(preds, mask)
        ours.update(preds, mask)
        same = all(
            abs(float(value) - float(ours.compute()[name])) < 1e-6 for name, value in theirs.compute().items()
        )
        shown = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in times.items())
        print(f"{size} px: {shown}; same values: {same}")


if __name__ == "__main__":
    main()
