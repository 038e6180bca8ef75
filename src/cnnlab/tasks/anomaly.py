"""One-class anomaly detection with an autoencoder: trained on normal images only, it scores each image by
its reconstruction error (``cnnlab.serving.anomaly``: a per-pixel map reduced to one score).

Evaluation logs image AUROC and average precision where a split holds both normal and anomalous images, and
pixel AUROC where the data has defect masks. A threshold is chosen at the end of every validation epoch: the
F1-best one when validation holds anomalies, else a quantile of the normal images' scores (a false-alarm rate
of about ``1 - normal_quantile``). It travels in the checkpoint's contract to test and export; test reports
its precision, recall and F1.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torchmetrics import CatMetric, SumMetric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_precision_recall_curve,
    binary_recall,
)

from cnnlab.errors import ConfigError
from cnnlab.figures.anomaly import AnomalyFigures
from cnnlab.figures.autoencoder import AutoencoderFigures
from cnnlab.samples import IGNORE_INDEX, SampleSpec, stack_collate
from cnnlab.serving.anomaly import REDUCTIONS, anomaly_map, image_scores
from cnnlab.tasks.autoencoder import AutoencoderTask, check_choice

#: what pixel AUROC is binned by: squared errors crowd near 0, so the steps are logarithmic
PIXEL_THRESHOLDS = torch.cat([torch.zeros(1), torch.logspace(-8, 0, 400)])
#: metrics a split can only give when it holds anomalous images
NEEDS_ANOMALIES = ("auroc", "ap", "precision", "recall", "f1", "pixel_auroc")


class BinnedAUROC(BinaryAUROC):
    """torchmetrics' AUROC over fixed thresholds, each batch counted in one pass over its scores.

    torchmetrics counts a batch of more than 50,000 scores threshold by threshold, four passes over the batch
    for each: 0.8-2.5 s for a batch of 32 maps of 256 px against ``PIXEL_THRESHOLDS`` (measured on a 2-core
    CPU), every evaluation step, after dropping the ignored pixels by boolean indexing (which waits for a
    GPU). Here each score is sorted into its bin (``bucketize``) and added into the bin's count by one
    scatter, the ignored ones into a spare row, as ``PixelScores`` counts segmentation's pixels: the same
    confusion counts, so the same state, synchronisation and ``compute``. The scores are squared errors in
    [0, 1], never logits: no sigmoid either (torchmetrics applies one to a batch holding a value outside
    [0, 1] or a NaN)."""

    def __init__(self, thresholds: Tensor, ignore_index: int | None = None) -> None:
        super().__init__(thresholds=thresholds, ignore_index=ignore_index, normalization=None)

    def update(self, preds: Tensor, target: Tensor) -> None:
        thresholds = self.thresholds
        assert isinstance(thresholds, Tensor)
        preds, target = preds.detach().flatten().to(thresholds.dtype), target.flatten()
        count = len(thresholds)
        # how many thresholds each score reaches (thresholds ascend): score >= thresholds[i] for i below it;
        # a NaN reaches none, as torchmetrics' comparisons count it
        reached = torch.bucketize(preds.nan_to_num(nan=-torch.inf), thresholds, right=True)
        # the kind of each pixel: 0 negative, 1 positive (torchmetrics' rule: 1 is a positive, any other value
        # a negative), 2 ignored
        kind = (target == 1).long()
        if self.ignore_index is not None:
            kind = torch.where(target == self.ignore_index, 2, kind)
        cells = reached * 3 + kind
        counts = torch.zeros(3 * (count + 1), dtype=torch.long, device=cells.device)
        per_bin = counts.scatter_add_(0, cells, torch.ones_like(cells)).view(count + 1, 3).T[:2]
        at_or_above = per_bin.flip(1).cumsum(1).flip(1)[:, 1:]  # (2, count): scores >= each threshold
        below = per_bin.sum(1, keepdim=True) - at_or_above
        # torchmetrics' layout: [threshold, target, prediction]
        self.confmat += torch.stack([below, at_or_above], dim=-1).permute(1, 0, 2)


class SplitScores(nn.Module):
    """The image scores, anomaly flags and pixel-level truth of one evaluation split, across devices.

    Image scores are kept (one number per image) for exact AUROC and threshold choice; pixels are binned,
    since a split's maps would not fit in memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scores, self.flags = CatMetric(), CatMetric()
        self.pixels = BinnedAUROC(PIXEL_THRESHOLDS, ignore_index=IGNORE_INDEX)
        self.defect_pixels, self.normal_pixels = SumMetric(), SumMetric()

    def update(self, scores: Tensor, flags: Tensor, maps: Tensor, masks: Tensor | None) -> None:
        """Add a batch: scores (N,), flags (N,), maps (N, H, W) and, where the data has them, masks."""
        self.scores.update(scores.detach().float())
        self.flags.update(flags.float())
        if masks is not None:
            self.pixels.update(maps.detach(), masks)
            self.defect_pixels.update((masks == 1).sum())
            self.normal_pixels.update((masks == 0).sum())

    def results(self) -> tuple[Tensor, Tensor]:
        """Every image's score and flag (0 normal, 1 anomalous) seen since the last reset."""
        if not self.scores.update_called:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return self.scores.compute().flatten(), self.flags.compute().flatten().long()

    def pixel_auroc(self) -> Tensor | None:
        """The AUROC of every pixel's error against the defect masks, when both kinds of pixel were seen."""
        if not self.pixels.update_called or not (
            self.defect_pixels.compute() and self.normal_pixels.compute()
        ):
            return None
        return self.pixels.compute()

    def reset(self) -> None:
        """Forget the split's scores, for the next epoch."""
        for metric in (self.scores, self.flags, self.pixels, self.defect_pixels, self.normal_pixels):
            metric.reset()


def best_f1_threshold(scores: Tensor, flags: Tensor) -> float:
    """The score threshold (anomalous when score >= it) with the highest F1 on these images."""
    precision, recall, thresholds = binary_precision_recall_curve(scores, flags)
    # the curve's last point (precision 1, recall 0) has no threshold
    f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]).clamp_min(1e-12)
    return float(thresholds[int(f1.argmax())])


class AnomalyTask(AutoencoderTask):
    """Trains an autoencoder on normal images; scores images by reconstruction error, flags those above a
    threshold chosen on validation."""

    name = "anomaly"
    # masks give pixel-level truth (MVTec AD), labels name the kind of anomaly in figures
    samples = SampleSpec(needs=("anomaly",), wants=("mask", "label"), normalize=False, collate=stack_collate)
    metrics = {
        **AutoencoderTask.metrics,
        "auroc": "max",
        "ap": "max",
        "precision": "max",
        "recall": "max",
        "f1": "max",
        "pixel_auroc": "max",
        # the decision threshold itself, logged so that metrics.json shows it: a setting, not a score
        "threshold": "min",
    }
    serving = "cnnlab.serving.anomaly"
    active_when = {**AutoencoderTask.active_when, "top_fraction": ("score", ("topk",))}

    def __init__(
        self,
        net: nn.Module,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune_cfg: dict[str, Any] | None = None,
        mode: str = "reconstruct",
        loss: str = "mse",
        noise: str = "gaussian",
        noise_level: float = 0.3,
        score: str = "mean",
        top_fraction: float = 0.01,
        normal_quantile: float = 0.95,
        figures: bool = True,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            net, optimizer, scheduler, finetune_cfg, mode, loss, noise, noise_level, figures, run_config
        )
        check_choice("score", score, REDUCTIONS)
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(
                f"task.top_fraction={top_fraction}: give the fraction of pixels that score=topk averages, "
                "in (0, 1]"
            )
        if not 0.0 < normal_quantile <= 1.0:
            raise ValueError(
                f"task.normal_quantile={normal_quantile}: give the quantile of normal validation scores that "
                "becomes the threshold, in (0, 1] (0.95 flags about 5% of normal images)"
            )
        self.val_scores, self.test_scores = SplitScores(), SplitScores()
        #: anomalous when score >= threshold; chosen at each validation epoch's end
        self.threshold: float | None = None
        self.threshold_rule = ""

    def figure_callbacks(self) -> list[L.Callback]:
        return [AutoencoderFigures(), AnomalyFigures()]

    def dashboard_hparams(self) -> dict[str, Any]:
        return {
            **super().dashboard_hparams(),
            "score": str(self.hparams.score),
            "normal_quantile": float(self.hparams.normal_quantile),
        }

    def contract_extras(self) -> dict[str, Any]:
        return {
            **super().contract_extras(),
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "score": str(self.hparams.score),
            "top_fraction": float(self.hparams.top_fraction),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.threshold = self.contract.get("threshold")
        self.threshold_rule = str(self.contract.get("threshold_rule", ""))

    def anomaly_scores(self, images: Tensor, reconstructions: Tensor) -> tuple[Tensor, Tensor]:
        """Each image's anomaly score (N,) and map (N, H, W), as the exported model computes them."""
        maps = anomaly_map(images, reconstructions)
        return image_scores(maps, self.hparams.score, float(self.hparams.top_fraction)), maps

    def _evaluate(
        self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int, split: str
    ) -> dict[str, Any]:
        out = super()._evaluate(batch, batch_idx, split)
        images, targets = batch
        # scores come from the clean image, as the exported model sees it, also when training denoises
        scored = self(images) if self.denoise else out["reconstructions"]
        scores, maps = self.anomaly_scores(images, scored)
        getattr(self, f"{split}_scores").update(scores, targets["anomaly"], maps, targets.get("mask"))
        return {**out, "scores": scores, "maps": maps, "scored_reconstructions": scored}

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        scores, flags = self.val_scores.results()
        normal = scores[flags == 0]
        if bool((flags == 1).any()) and len(normal):
            self.threshold, self.threshold_rule = best_f1_threshold(scores, flags), "best F1 on validation"
        elif len(normal):
            quantile = float(self.hparams.normal_quantile)
            self.threshold = float(torch.quantile(normal, quantile))
            self.threshold_rule = f"the {quantile:g} quantile of normal validation scores"
        self._log_detection("val", scores, flags, self.val_scores.pixel_auroc())
        if not self.trainer.sanity_checking:
            self._check_optimized_metric(flags)
        self.val_scores.reset()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        scores, flags = self.test_scores.results()
        self._log_detection("test", scores, flags, self.test_scores.pixel_auroc())
        self.test_scores.reset()

    def _log_detection(self, split: str, scores: Tensor, flags: Tensor, pixel_auroc: Tensor | None) -> None:
        # every process holds every score (torchmetrics synchronised them): sync_dist says so to Lightning
        record = functools.partial(self.log, sync_dist=True)
        anomalous = bool((flags == 1).any())
        if anomalous and bool((flags == 0).any()):
            record(f"{split}/auroc", binary_auroc(scores, flags))
            record(f"{split}/ap", binary_average_precision(scores, flags))
        if self.threshold is not None and len(scores):
            record(f"{split}/threshold", self.threshold)
            if anomalous:
                flagged = (scores >= self.threshold).long()
                record(f"{split}/precision", binary_precision(flagged, flags))
                record(f"{split}/recall", binary_recall(flagged, flags))
                record(f"{split}/f1", binary_f1_score(flagged, flags))
        if pixel_auroc is not None:
            record(f"{split}/pixel_auroc", pixel_auroc)

    def _check_optimized_metric(self, flags: Tensor) -> None:
        metric = str((self.hparams.run_config or {}).get("optimized_metric", ""))
        if metric.startswith("val/") and metric[4:] in NEEDS_ANOMALIES and not bool((flags == 1).any()):
            raise ConfigError(
                f"optimized_metric={metric} needs anomalous images in the validation split, but this run's "
                "holds normal images only (data.normal_classes keeps the other classes for testing unless "
                "data.val_anomalies > 0; MVTec AD validates on train/good). Choose "
                "optimized_metric=val/loss, or put anomalies into validation (data.val_anomalies=0.5; "
                "data=mvtec: data.val_from_test=0.25)."
            )
