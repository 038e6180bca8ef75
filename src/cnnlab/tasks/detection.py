"""Object detection: the detector's own losses; mAP, mAP@50, mAP@75 and per-class AP on validation and test.

Batches are lists of images in [0, 1] and target dicts (``boxes`` XYXY in pixels, ``labels`` indexing the
data's ``class_names``), as torchvision's detectors take them; the network normalises and resizes by itself.
Crowd regions (COCO's ``iscrowd``), difficult objects (VOC's ``difficult``) and boxes without area are
ignored: not trained on, and neither a hit nor a miss when scored. mAP is computed by torchmetrics'
``MeanAveragePrecision`` on the ``faster_coco_eval`` backend: pycocotools' numbers, several times faster;
as in COCO's tools, a split without a single ground-truth box scores -1 (undefined).

``val/loss`` is the sum of the detector's training losses on validation images, with batch norm and dropout
in eval mode: torchvision's detectors return detections only in eval mode, so the losses are taken from a
second pass in which everything but those layers (and torchvision's random-size preprocessing) believes it
is training. It tells over-fitting apart from a learning rate too high, which mAP alone does not.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as L
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import StochasticDepth

from cnnlab.figures.detection import DetectionFigures
from cnnlab.samples import SampleSpec, list_collate
from cnnlab.tasks.base import BaseTask

Target = dict[str, Tensor]
# faster-coco-eval logs COCO's twelve-line summary at INFO after every evaluation: the task logs its metrics
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

#: the three summaries the task logs, as torchmetrics names them
SUMMARIES = ("map", "map_50", "map_75")
#: layers that behave differently in training beyond returning losses: kept in eval mode for ``val/loss``
EVAL_ONLY = (_NormBase, _DropoutNd, StochasticDepth, GeneralizedRCNNTransform)


class DetectionTask(BaseTask):
    """Trains a detector on (images, targets) batches and scores its detections with COCO's mAP.

    ``score_threshold``: detections scoring below it are left out of the figures and of the exported model's
    output (``predict --threshold`` changes it); mAP uses every detection the network returns.
    """

    name = "detection"
    samples = SampleSpec(
        needs=("boxes",),
        wants=("difficult", "iscrowd"),
        eval_geometry="none",
        normalize=False,
        collate=list_collate,
    )
    network_output = "detections"
    # the components are torchvision's one-stage losses (FCOS adds bbox_ctrness); per-class AP
    # (map_per_class/<class>) depends on the data and cannot be an optimized_metric
    metrics = {
        "loss": "min",
        "loss_classification": "min",
        "loss_bbox_regression": "min",
        "loss_bbox_ctrness": "min",
        "map": "max",
        "map_50": "max",
        "map_75": "max",
    }
    serving = "cnnlab.serving.detection"

    def __init__(
        self,
        net: nn.Module,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune_cfg: dict[str, Any] | None = None,
        score_threshold: float = 0.5,
        figures: bool = True,
        figure_images: int = 8,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, finetune_cfg, run_config, figures)
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"task.score_threshold={score_threshold}: give a detection score in [0, 1]")
        if importlib.util.find_spec("faster_coco_eval") is None:
            raise ModuleNotFoundError(
                "task=detection computes mAP with faster-coco-eval, which is not installed: "
                "pip install 'faster-coco-eval>=1.6,<2' (cnnlab's dependencies name it)"
            )
        self.val_map = mean_average_precision()
        self.test_map = mean_average_precision()

    def figure_callbacks(self) -> list[L.Callback]:
        return [DetectionFigures(self.hparams.figure_images, self.hparams.score_threshold)]

    def dashboard_hparams(self) -> dict[str, Any]:
        return {"score_threshold": float(self.hparams.score_threshold)}

    def contract_extras(self) -> dict[str, Any]:
        return {"score_threshold": float(self.hparams.score_threshold)}

    # --- steps -------------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[list[Tensor], list[Target]], batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.net(images, [trainable(t) for t in targets])
        loss = sum(losses.values())
        self.log_train_loss(loss, len(images), **losses)
        return loss

    def validation_step(self, batch: tuple[list[Tensor], list[Target]], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "val", self.val_map)

    def test_step(self, batch: tuple[list[Tensor], list[Target]], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, "test", self.test_map)

    def predict_step(self, batch: Any, batch_idx: int) -> list[Target]:
        images = batch[0] if isinstance(batch, tuple) else batch
        return self(images)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_map("val", self.val_map)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_map("test", self.test_map)

    # --- helpers -----------------------------------------------------------------------------------------

    def _evaluate(
        self, batch: tuple[list[Tensor], list[Target]], split: str, metric: MeanAveragePrecision
    ) -> dict[str, Any]:
        images, targets = batch
        detections = self.net(images)
        with losses_in_eval_mode(self.net):
            losses = self.net(images, [trainable(t) for t in targets])
        self.log_eval_loss(split, sum(losses.values()), len(images))
        metric.update(detections, [scored(t) for t in targets])
        return {"detections": [{k: v.detach() for k, v in found.items()} for found in detections]}

    def _log_map(self, split: str, metric: MeanAveragePrecision) -> None:
        results = metric.compute()
        metric.reset()
        for key in SUMMARIES:
            self.log(f"{split}/{key}", float(results[key]), prog_bar=key == "map_50", sync_dist=True)
        names = self.contract.get("class_names", [])
        classes = results["classes"].reshape(-1).tolist()
        for index, ap in zip(classes, results["map_per_class"].reshape(-1).tolist(), strict=True):
            if ap < 0:  # COCO's -1: the class has no ground truth here (the background, a rare class)
                continue
            name = names[index] if index < len(names) else str(index)
            self.log(f"{split}/map_per_class/{name.replace(' ', '_')}", ap, sync_dist=True)


def mean_average_precision() -> MeanAveragePrecision:
    """COCO's box mAP (IoU 0.50:0.95, @50, @75) with per-class AP, on the faster-coco-eval backend."""
    return MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, backend="faster_coco_eval"
    )


def ignored(target: Target) -> Tensor:
    """Which boxes are neither to find nor to avoid: crowd regions, difficult objects, boxes without area."""
    boxes = target["boxes"]
    flags = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    for key in ("iscrowd", "difficult"):
        if key in target:
            flags = flags | target[key].bool()
    return flags


def trainable(target: Target) -> Target:
    """The boxes a detector trains on: those not ignored."""
    keep = ~ignored(target)
    return {"boxes": target["boxes"][keep], "labels": target["labels"][keep]}


def scored(target: Target) -> Target:
    """The ground truth as the mAP metric takes it: ignored boxes marked as crowd."""
    return {"boxes": target["boxes"], "labels": target["labels"], "iscrowd": ignored(target).long()}


@contextmanager
def losses_in_eval_mode(net: nn.Module) -> Iterator[None]:
    """Within the block, ``net`` returns its training losses while normalisation and dropout stay in eval."""
    switched = [m for m in net.modules() if not m.training and not isinstance(m, EVAL_ONLY)]
    for module in switched:
        module.training = True
    try:
        yield
    finally:
        for module in switched:
            module.training = False
