"""Image classification: cross-entropy (or the network's own loss), accuracy (top-1, top-5), macro F1."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from cnnlab.figures.classification import ClassificationFigures
from cnnlab.samples import SampleSpec, label_collate
from cnnlab.tasks.base import BaseTask
from cnnlab.tasks.mixing import batch_mix


class ClassificationTask(BaseTask):
    """Trains a network of class scores on (images, labels) batches; logs train/val/test metrics each epoch.

    ``mixup_alpha`` / ``cutmix_alpha`` > 0 mix training batches (labels become class probabilities, so there
    is no train/acc then).

    A network may bring its own loss and prediction (a capsule network's outputs are no logits): where it
    defines ``loss(output, labels, images)`` (``images`` as pixels in [0, 1], the data's normalisation
    undone) and ``probabilities(output)`` (N, K), the task trains with the one and scores, predicts and
    exports with the other, in place of cross-entropy and softmax.
    """

    name = "classification"
    samples = SampleSpec(needs=("label",), eval_geometry="crop", collate=label_collate)
    network_output = "scores"
    metrics = {"loss": "min", "acc": "max", "f1": "max", "acc_top5": "max"}
    serving = "cnnlab.serving.classification"

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune_cfg: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        figures: bool = True,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, finetune_cfg, run_config, figures)
        if label_smoothing and hasattr(net, "loss"):
            raise ValueError(
                f"task.label_smoothing={label_smoothing} smooths cross-entropy, but {type(net).__name__} "
                "trains with its own loss; set task.label_smoothing=0"
            )
        self._pixel_stats: tuple[Any, Tensor, Tensor] | None = None
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
        self.mix = batch_mix(num_classes, mixup_alpha, cutmix_alpha)

    def figure_callbacks(self) -> list[L.Callback]:
        return [ClassificationFigures()]

    def dashboard_hparams(self) -> dict[str, Any]:
        return {
            "label_smoothing": float(self.hparams.label_smoothing),
            "mixup_alpha": float(self.hparams.mixup_alpha),
            "cutmix_alpha": float(self.hparams.cutmix_alpha),
        }

    def loss(self, output: Tensor, target: Tensor, images: Tensor) -> Tensor:
        """The network's own loss, else cross-entropy; ``target`` is class indices or, after mixup/cutmix,
        class probabilities."""
        own = getattr(self.net, "loss", None)
        if own is not None:
            return own(output, target, self.pixels(images))
        return F.cross_entropy(output, target, label_smoothing=self.hparams.label_smoothing)

    def scores(self, output: Tensor) -> Tensor:
        """Class scores (N, K) for metrics and figures: the network's own probabilities, else its logits."""
        own = getattr(self.net, "probabilities", None)
        return output if own is None else own(output)

    def pixels(self, images: Tensor) -> Tensor:
        """The batch as its files hold it, in [0, 1]: the data's normalisation undone."""
        mean, std = self.contract.get("mean") or [], self.contract.get("std") or []
        if not mean:
            return images
        key = (images.device, tuple(mean), tuple(std))
        if self._pixel_stats is None or self._pixel_stats[0] != key:  # made once, not copied every step
            mean_t, std_t = (
                torch.tensor(v, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
                for v in (mean, std)
            )
            self._pixel_stats = (key, mean_t, std_t)
        _, mean_t, std_t = self._pixel_stats
        return images * std_t + mean_t

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # mixing needs the whole batch; done here, before callbacks see the batch the model trains on
        if self.mix is not None and self._trainer is not None and self.trainer.training:
            return self.mix(*batch)
        return batch

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        output = self(images)
        loss = self.loss(output, labels, images)
        self.log_train_loss(loss, len(images))
        if labels.dim() == 1:  # soft (mixed) labels have no accuracy to speak of
            self.update_metrics(self.train_metrics, self.scores(output), labels)  # logged once an epoch
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        scores = self._evaluate(batch, "test", self.test_metrics)
        return {"scores": scores.detach()}  # the figures rank classes by them (probabilities or logits)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        output = self(images)
        own = getattr(self.net, "probabilities", None)
        return torch.softmax(output, dim=1) if own is None else own(output)

    def _evaluate(self, batch: tuple[Tensor, Tensor], split: str, metrics: MetricCollection) -> Tensor:
        images, labels = batch
        output = self(images)
        loss = self.loss(output, labels, images)
        self.log_eval_loss(split, loss, len(images))
        scores = self.scores(output)
        self.update_metrics(metrics, scores, labels)  # logged once per epoch (BaseTask)
        return scores
