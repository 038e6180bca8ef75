"""What the dense tasks' metric updates cost a step, torchmetrics' own against cnnlab's:

- ``--task segmentation``: torchmetrics' mIoU, Dice and pixel accuracy (with their input checks, and
  ``unchecked``) against cnnlab's one pixel confusion matrix (``PixelScores``), on random class maps;
- ``--task anomaly``: torchmetrics' binned AUROC against cnnlab's one-pass count (``BinnedAUROC``) over the
  pixel thresholds of anomaly detection, on random error maps (squared errors, crowded near 0) and masks.

    python scripts/bench_metrics.py [--task segmentation] [--sizes 64 128 256] [--batch 8] [--classes 21]
        [--updates 20] [--device cpu]

Each side updates on the same values (10% of the pixels ignored); the best of 3 rounds of ``--updates``
updates is printed per size, with whether the sides give the same values and, on a GPU, how many times one
update of each side made the host wait for the device (``torch.cuda.set_sync_debug_mode``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from cnnlab.samples import IGNORE_INDEX
from cnnlab.tasks.anomaly import PIXEL_THRESHOLDS, BinnedAUROC
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
    make: Callable[[], MetricCollection], preds: torch.Tensor, mask: torch.Tensor, updates: int
) -> float:
    best = float("inf")
    for _ in range(3):
        metrics = make().to(preds.device)
        metrics.update(preds, mask)  # the first call allocates
        sync = torch.cuda.synchronize if preds.is_cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(updates):
            metrics.update(preds, mask)
        sync()
        best = min(best, (time.perf_counter() - start) / updates)
    return best


#: what PyTorch's warning says of a call that makes the host wait for the GPU
SYNC_WARNING = "called a synchronizing CUDA operation"


def host_waits(make: Callable[[], MetricCollection], preds: torch.Tensor, mask: torch.Tensor) -> int:
    """How many calls of one update (after a first) made the host wait for the GPU."""
    metrics = make().to(preds.device)
    metrics.update(preds, mask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            metrics.update(preds, mask)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(SYNC_WARNING in str(w.message) for w in caught)


def sides_and_values(
    task: str, batch: int, size: int, classes: int, device: str
) -> tuple[dict[str, Callable[[], MetricCollection]], torch.Tensor, torch.Tensor]:
    """The sides compared for ``task`` (torchmetrics' first, cnnlab's last) and the values they update on."""
    generator = torch.Generator().manual_seed(size)
    if task == "anomaly":
        preds = torch.rand(batch, size, size, generator=generator) ** 4
        mask = (torch.rand(batch, size, size, generator=generator) > 0.95).long()
        options = {"ignore_index": IGNORE_INDEX}
        sides = {
            "torchmetrics": lambda: MetricCollection(
                {"pixel_auroc": BinaryAUROC(thresholds=PIXEL_THRESHOLDS, **options)}
            ),
            "BinnedAUROC": lambda: MetricCollection(
                {"pixel_auroc": BinnedAUROC(PIXEL_THRESHOLDS, **options)}
            ),
        }
    else:
        preds = torch.randint(0, classes, (batch, size, size), generator=generator)
        mask = torch.randint(0, classes, (batch, size, size), generator=generator)
        sides = {
            "torchmetrics": lambda: torchmetrics_three(classes, True),
            "torchmetrics unchecked": lambda: torchmetrics_three(classes, False),
            "PixelScores": lambda: MetricCollection(
                {"pixels": PixelScores(classes, ignore_index=IGNORE_INDEX)}
            ),
        }
    mask[torch.rand(mask.shape, generator=generator) < 0.1] = IGNORE_INDEX
    return sides, preds.to(device), mask.to(device)


def same_values(theirs: MetricCollection, ours: MetricCollection) -> bool:
    """Whether cnnlab's side computes what torchmetrics' does (segmentation: PixelScores gives all three)."""
    computed = ours.compute()
    found = computed.get("pixels", computed)
    return all(abs(float(value) - float(found[name])) < 1e-6 for name, value in theirs.compute().items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["segmentation", "anomaly"], default="segmentation")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.classes < 2 or args.batch < 1 or args.updates < 1 or min(args.sizes) < 1:
        parser.error("--classes: at least 2; --batch, --updates and --sizes: at least 1")
    what = "error maps" if args.task == "anomaly" else f"masks of {args.classes} classes"
    print(f"{args.batch} {what} on {args.device}; the time of an update, best of 3 x {args.updates}")
    for size in args.sizes:
        sides, preds, mask = sides_and_values(args.task, args.batch, size, args.classes, args.device)
        times = {name: seconds_per_update(make, preds, mask, args.updates) for name, make in sides.items()}
        theirs, ours = (make().to(args.device) for make in (sides["torchmetrics"], list(sides.values())[-1]))
        theirs.update(preds, mask)
        ours.update(preds, mask)
        shown = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in times.items())
        line = f"{size} px: {shown}; same values: {same_values(theirs, ours)}"
        if preds.is_cuda:
            waits = ", ".join(f"{name} {host_waits(make, preds, mask)}" for name, make in sides.items())
            line += f"; host waits in an update: {waits}"
        print(line)


if __name__ == "__main__":
    main()
