"""Semantic segmentation: a class for every pixel; cross-entropy and/or Dice loss, mIoU, Dice, pixel accuracy.

Pixels whose mask holds ``IGNORE_INDEX`` (VOC's object borders, the padding of crops and batches) count in
neither loss nor metrics. The test adds the IoU of every class: logged as ``test/iou/<class>`` (so in
metrics.json; a second slash marks a per-class value) and printed as a table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from cnnlab.errors import ConfigError
from cnnlab.figures.segmentation import SegmentationFigures
from cnnlab.samples import IGNORE_INDEX, SampleSpec, pad_collate
from cnnlab.tasks.base import BaseTask

log = logging.getLogger(__name__)

LOSSES = ("ce", "dice", "ce+dice")


class SegmentationTask(BaseTask):
    """Trains a network of per-pixel class scores on (images, {"mask": ...}) batches.

    ``loss``: ``ce`` (cross-entropy), ``dice`` (soft Dice over the classes) or ``ce+dice`` (their sum);
    ``class_weights`` (one per class) weigh both. A network with an auxiliary head (torchvision's
    ``aux_loss=True``) adds ``aux_weight`` times the same loss of that head's scores to the training loss.
    """

    name = "segmentation"
    samples = SampleSpec(needs=("mask",), eval_geometry="resize", collate=pad_collate)
    network_output = "pixel_scores"
    metrics = {"loss": "min", "miou": "max", "dice": "max", "pixel_acc": "max"}
    serving = "cnnlab.serving.segmentation"

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune_cfg: dict[str, Any] | None = None,
        loss: str = "ce",
        class_weights: Sequence[float] | None = None,
        aux_weight: float = 0.5,
        figures: bool = True,
        figure_images: int = 8,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, finetune_cfg, run_config, figures)
        if loss not in LOSSES:
            raise ConfigError(
                f"task.loss={loss!r} is not a segmentation loss; choose one of {', '.join(LOSSES)}"
            )
        self.num_classes = int(num_classes)
        self.register_buffer(
            "class_weights", _class_weights(class_weights, self.num_classes), persistent=False
        )
        # one pixel confusion matrix per split, counted without waiting for the device (PixelScores); its
        # checks of the classes are off: the masks are checked before they reach the device
        # (on_before_batch_transfer), and predictions are argmaxes. Updated step by step, not batched as
        # classification's: per-pixel costs dominate, and concatenating a few steps' pixels was slower
        pixels = PixelScores(self.num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        collection = MetricCollection({"pixels": pixels})
        self.train_metrics = collection.clone(prefix="train/")
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")

    def figure_callbacks(self) -> list[L.Callback]:
        return [SegmentationFigures(int(self.hparams.figure_images))]

    def dashboard_hparams(self) -> dict[str, Any]:
        return {
            "seg_loss": str(self.hparams.loss),
            "class_weighted": self.hparams.class_weights is not None,
            "aux_weight": float(self.hparams.aux_weight),
        }

    # --- loss --------------------------------------------------------------------------------------------

    def loss(self, scores: Tensor, mask: Tensor) -> Tensor:
        """The configured loss of class scores (N, K, H, W) for a mask (N, H, W); ignored pixels skipped."""
        kind = self.hparams.loss
        total = scores.new_zeros(())
        if kind in ("ce", "ce+dice"):
            total = total + cross_entropy(scores, mask, self.class_weights)
        if kind in ("dice", "ce+dice"):
            total = total + dice_loss(scores, mask, self.class_weights)
        return total

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # checked on the CPU, before the batch reaches the device: on a GPU the same check in the step would
        # wait for the device every batch
        if isinstance(batch, (tuple, list)) and len(batch) > 1 and "mask" in batch[1]:
            self._check_mask(batch[1]["mask"])
        return batch

    def _check_mask(self, mask: Tensor) -> None:
        wrong = mask[((mask >= self.num_classes) & (mask != IGNORE_INDEX)) | (mask < 0)]
        if wrong.numel() and int(wrong.min()) < 0:
            raise ConfigError(
                f"a mask holds class {int(wrong.min())}: classes are 0 to {self.num_classes - 1}, and "
                f"{IGNORE_INDEX} marks the pixels to ignore; map the dataset's ignore value to {IGNORE_INDEX}"
            )
        if wrong.numel():
            raise ConfigError(
                f"a mask holds class {int(wrong.max())} but task.num_classes={self.num_classes} (classes 0 "
                f"to {self.num_classes - 1}, {IGNORE_INDEX} ignored): set data.num_classes to the number of "
                "classes of the dataset, background included"
            )

    # --- steps -------------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int) -> Tensor:
        images, mask = batch[0], batch[1]["mask"]
        if getattr(self.net, "aux_loss", False):  # torchvision's segmenters with their auxiliary head
            outputs = self.net.forward_dict(images)
            scores = outputs["out"]
            loss = self.loss(scores, mask) + self.hparams.aux_weight * self.loss(outputs["aux"], mask)
        else:
            scores = self(images)
            loss = self.loss(scores, mask)
        self.log_train_loss(loss, len(images))
        self.train_metrics.update(scores.detach().argmax(1), mask)  # logged once per epoch (BaseTask)
        return loss

    def validation_step(self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int) -> dict[str, Tensor]:
        return {"preds": self._evaluate(batch, "val", self.val_metrics)}

    def test_step(self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int) -> dict[str, Tensor]:
        return {"preds": self._evaluate(batch, "test", self.test_metrics)}

    def on_test_epoch_end(self) -> None:
        confusion = self.test_metrics["pixels"].confusion().cpu()  # before the metrics are logged and reset
        super().on_test_epoch_end()
        names = self._class_names()
        iou, table = class_table(confusion, names)
        for name, value in zip(metric_names(names), iou.tolist(), strict=True):
            self.log(f"test/iou/{name}", value, sync_dist=True)  # the same in every process
        if self.global_rank == 0:  # every process holds the same table: print it once
            log.info("per-class IoU on the test split (n/a: a class neither true nor predicted):\n%s", table)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(images), dim=1)

    def _evaluate(
        self, batch: tuple[Tensor, dict[str, Tensor]], split: str, metrics: MetricCollection
    ) -> Tensor:
        images, mask = batch[0], batch[1]["mask"]
        scores = self(images)
        self.log_eval_loss(split, self.loss(scores, mask), len(images))
        preds = scores.argmax(1)
        metrics.update(preds, mask)  # logged once per epoch (BaseTask)
        return preds

    def _class_names(self) -> list[str]:
        names = list(self.contract.get("class_names") or [])
        return names if len(names) == self.num_classes else [str(k) for k in range(self.num_classes)]


# --- metrics ------------------------------------------------------------------------------------------------


class PixelScores(MulticlassConfusionMatrix):
    """A split's mIoU, Dice and pixel accuracy, from torchmetrics' confusion matrix of its pixels (true
    classes on rows), counted without waiting for a GPU. The means are over the classes that appear (true or
    predicted) in the split, as torchmetrics' macro averages.

    torchmetrics' own update drops the ignored pixels by boolean indexing and counts with ``bincount``, and
    on a GPU both wait for the device every step; here every pixel is added into the matrix by one scatter,
    the ignored ones into a spare cell. The states and their reduction across processes are torchmetrics'.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        k = self.num_classes
        target, preds = target.long(), preds.long()
        cells = torch.where(target != self.ignore_index, target * k + preds, k * k).reshape(-1)
        counts = torch.zeros(k * k + 1, dtype=self.confmat.dtype, device=cells.device)
        self.confmat += counts.scatter_add_(0, cells, torch.ones_like(cells))[:-1].view(k, k)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        confusion = super().compute()
        iou = class_iou(confusion)
        return {
            "miou": iou.nanmean().nan_to_num(0.0),
            "dice": (2 * iou / (1 + iou)).nanmean().nan_to_num(0.0),  # a class's Dice from its IoU
            "pixel_acc": confusion.diag().sum() / confusion.sum().clamp_min(1),
        }

    def confusion(self) -> Tensor:
        """The matrix summed over every process, as ``compute`` reads it."""
        with self.sync_context():
            return self.confmat.clone()


def class_iou(confusion: Tensor) -> Tensor:
    """Per-class IoU of a confusion matrix (true classes on rows); NaN for a class neither true nor
    predicted."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits  # true or predicted: tp + fp + fn
    return torch.where(union > 0, hits / union.clamp_min(1), torch.full_like(hits, float("nan")))


# --- losses and per-class figures ---------------------------------------------------------------------------


def cross_entropy(scores: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Pixel cross-entropy over the pixels not ignored (weighted mean); 0 when every pixel is ignored."""
    total = F.cross_entropy(scores, mask, weight=weights, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = mask != IGNORE_INDEX  # counted as a mask, not selected: selecting waits for a GPU
    # torch's mean over no pixel is NaN: a crop of ignored pixels only must not end the run
    if weights is None:
        count = valid.sum(dtype=scores.dtype)
    else:
        count = (weights[torch.where(valid, mask, 0)] * valid).sum()
    return total / count.clamp_min(1e-8)


def dice_loss(scores: Tensor, mask: Tensor, weights: Tensor | None = None, smooth: float = 1.0) -> Tensor:
    """1 - the soft Dice score of each class over the batch, averaged over the classes (weighted)."""
    valid = (mask != IGNORE_INDEX).unsqueeze(1)
    probs = torch.softmax(scores, dim=1) * valid
    truth = F.one_hot(torch.where(valid[:, 0], mask, 0), scores.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    overlap = (probs * truth).sum(dims)
    # smoothing: a class absent from truth and prediction alike scores 1, not 0/0
    dice = (2 * overlap + smooth) / (probs.sum(dims) + truth.sum(dims) + smooth)
    if weights is None:
        return 1 - dice.mean()
    return 1 - (dice * weights).sum() / weights.sum()


def class_table(confusion: Tensor, names: Sequence[str]) -> tuple[Tensor, str]:
    """Per-class IoU of a confusion matrix (true classes on rows; NaN for absent classes) and its table."""
    iou = class_iou(confusion)
    confusion = confusion.double()
    share = confusion.sum(1) / confusion.sum().clamp_min(1)
    width = max(len("class"), *(len(name) for name in names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'pixels':>7}"]
    for name, value, part in zip(names, iou.tolist(), share.tolist(), strict=True):
        shown = "   n/a" if value != value else f"{value:6.3f}"
        lines.append(f"{name:<{width}}  {shown}  {part:7.1%}")
    return iou.float(), "\n".join(lines)


def metric_names(names: Sequence[str]) -> list[str]:
    """Class names usable in metric keys (letters, digits, - and _), made unique."""
    cleaned: list[str] = []
    for name in names:
        key = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_") or "class"
        while key in cleaned:
            key += "_"
        cleaned.append(key)
    return cleaned


def _class_weights(weights: Sequence[float] | None, num_classes: int) -> Tensor | None:
    if weights is None:
        return None
    values = [float(w) for w in weights]
    if len(values) != num_classes or min(values) < 0 or sum(values) <= 0:
        raise ConfigError(
            f"task.class_weights={values}: give {num_classes} non-negative weights, one per class in "
            "data.num_classes (background included), not all zero; or null for equal weights"
        )
    return torch.tensor(values)
