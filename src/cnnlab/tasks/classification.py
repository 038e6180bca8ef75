"""Image classification: cross-entropy, accuracy (top-1, top-5) and macro F1 per split."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from cnnlab.tasks.base import BaseTask


class ClassificationTask(BaseTask):
    """Trains a ``Classifier`` on (images, labels) batches and logs train/val/test metrics every epoch."""

    kind = "classification"

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune_cfg: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, finetune_cfg, run_config)
        metrics: dict[str, Any] = {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
        if num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        # no compute groups: Lightning logs each metric on its own, and shared states then go stale
        collection = MetricCollection(metrics, compute_groups=False)
        self.train_metrics = collection.clone(prefix="train/")
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy; ``target`` is class indices or, after mixup/cutmix, class probabilities."""
        return F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        if labels.dim() == 1:  # soft (mixed) labels have no accuracy to speak of
            self.train_metrics.update(logits, labels)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        logits = self._evaluate(batch, "test", self.test_metrics)
        return {"logits": logits.detach()}

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(images), dim=1)

    def _evaluate(self, batch: tuple[Tensor, Tensor], split: str, metrics: MetricCollection) -> Tensor:
        images, labels = batch
        logits = self(images)
        self.log(
            f"{split}/loss", self.loss(logits, labels), prog_bar=True, batch_size=len(images), sync_dist=True
        )
        metrics.update(logits, labels)
        self.log_dict(metrics, prog_bar=split == "val")
        return logits
