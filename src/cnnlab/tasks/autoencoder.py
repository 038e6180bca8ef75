"""Autoencoding: reconstruct each image (``mode=reconstruct``) or a clean image from a noisy copy
(``mode=denoise``); PSNR and SSIM per evaluation split, and in denoise mode those of the noisy input too.

Images stay in [0, 1] (no normalisation): the network's sigmoid output is compared with them directly.
Denoising draws fresh noise for every training batch and seeded noise for evaluation batches, so every
epoch (and every run of the same seed) is scored on the same noisy images.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from cnnlab.figures.autoencoder import AutoencoderFigures
from cnnlab.samples import SampleSpec, stack_collate
from cnnlab.tasks.base import BaseTask

MODES = ("reconstruct", "denoise")
LOSSES = ("mse", "l1", "bce", "ssim")
NOISES = ("gaussian", "salt_pepper", "masking")
#: metrics that only denoising logs (the noisy input's quality, and the gain over it)
DENOISE_METRICS = ("psnr_noisy", "ssim_noisy", "psnr_gain")


def add_noise(images: Tensor, kind: str, level: float, generator: torch.Generator | None = None) -> Tensor:
    """A noisy copy of images in [0, 1]: Gaussian (std ``level``), salt-and-pepper or masking (a ``level``
    fraction of the pixels set to black or white, or to black)."""
    if kind == "gaussian":
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return (images + level * noise).clamp(0.0, 1.0)
    # a pixel is hit in every channel at once: a dead pixel, not a colour shift
    shape = (images.shape[0], 1, *images.shape[2:])
    hit = torch.rand(shape, generator=generator, device=images.device) < level
    if kind == "masking":
        return images.masked_fill(hit, 0.0)
    salt = (torch.rand(shape, generator=generator, device=images.device) < 0.5).to(images.dtype)
    return torch.where(hit, salt.expand_as(images), images)


def reconstruction_loss(kind: str, output: Tensor, target: Tensor) -> Tensor:
    """The loss between a reconstruction and its target, both in [0, 1]: mse, l1, bce or ssim (1 - SSIM)."""
    if kind == "mse":
        return F.mse_loss(output, target)
    if kind == "l1":
        return F.l1_loss(output, target)
    # BCE and SSIM are unsafe in half precision (torch refuses BCE under autocast): computed in float32
    with torch.autocast(output.device.type, enabled=False):
        if kind == "bce":
            return F.binary_cross_entropy(output.float(), target.float())
        return 1.0 - structural_similarity_index_measure(output.float(), target.float(), data_range=1.0)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a task option outside its choices, naming the key and the choices."""
    if value not in choices:
        raise ValueError(f"task.{key}={value!r} is not an option; choose one of {', '.join(choices)}")


def quality_metrics() -> MetricCollection:
    """PSNR and SSIM of images in [0, 1], each pooled over a whole split."""
    # no compute groups: Lightning logs each metric on its own, and shared states then go stale
    return MetricCollection(
        {
            "psnr": PeakSignalNoiseRatio(data_range=1.0),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
        },
        compute_groups=False,
    )


class AutoencoderTask(BaseTask):
    """Trains a network that returns images to reproduce its input, or to denoise a corrupted copy of it."""

    name = "autoencoder"
    # the label, where the data has one, colours the picture of the codes
    samples = SampleSpec(needs=(), wants=("label",), normalize=False, collate=stack_collate)
    network_output = "image"
    active_when = {"noise": ("mode", ("denoise",)), "noise_level": ("mode", ("denoise",))}
    metrics = {
        "loss": "min",
        "psnr": "max",
        "ssim": "max",
        "psnr_noisy": "max",
        "ssim_noisy": "max",
        "psnr_gain": "max",
    }
    serving = "cnnlab.serving.autoencoder"

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
        figures: bool = True,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, finetune_cfg, run_config, figures)
        check_choice("mode", mode, MODES)
        check_choice("loss", loss, LOSSES)
        check_choice("noise", noise, NOISES)
        most = float("inf") if noise == "gaussian" else 1.0
        if mode == "denoise" and not 0.0 < noise_level <= most:
            raise ValueError(
                f"task.noise_level={noise_level}: give the noise's strength, above 0 (the standard deviation "
                "of gaussian noise, or the fraction of pixels hit by salt_pepper and masking, at most 1)"
            )
        metric = str((run_config or {}).get("optimized_metric", ""))
        if mode != "denoise" and metric.endswith(DENOISE_METRICS):
            raise ValueError(
                f"optimized_metric={metric} is logged in task.mode=denoise only; with mode={mode} choose "
                "val/loss, val/psnr or val/ssim"
            )
        self.denoise = mode == "denoise"
        quality = quality_metrics()
        self.val_quality = quality.clone(prefix="val/")
        self.test_quality = quality.clone(prefix="test/")
        if self.denoise:
            self.val_noisy = quality.clone(prefix="val/", postfix="_noisy")
            self.test_noisy = quality.clone(prefix="test/", postfix="_noisy")

    def figure_callbacks(self) -> list[L.Callback]:
        return [AutoencoderFigures()]

    def dashboard_hparams(self) -> dict[str, Any]:
        return {
            "mode": str(self.hparams.mode),
            "loss": str(self.hparams.loss),
            "noise": str(self.hparams.noise) if self.denoise else "none",
            "noise_level": float(self.hparams.noise_level) if self.denoise else 0.0,
        }

    def contract_extras(self) -> dict[str, Any]:
        return {"mode": str(self.hparams.mode)}

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The configured reconstruction loss (``task.loss``)."""
        return reconstruction_loss(self.hparams.loss, output, target)

    def corrupt(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """What the network sees: the images themselves, or in denoise mode a noisy copy."""
        if not self.denoise:
            return images
        return add_noise(images, self.hparams.noise, float(self.hparams.noise_level), generator)

    def training_step(self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int) -> Tensor:
        images = batch[0]
        loss = self.loss(self(self.corrupt(images)), images)
        self.log_train_loss(loss, len(images))
        return loss

    def validation_step(self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, batch_idx, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_quality("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_quality("test")

    def _evaluate(
        self, batch: tuple[Tensor, dict[str, Tensor]], batch_idx: int, split: str
    ) -> dict[str, Any]:
        images, targets = batch
        # the same noise for the same batch in every epoch: scores differ by the model alone
        seed = int((self.hparams.run_config or {}).get("seed", 0)) * 100_003 + batch_idx
        generator = torch.Generator(images.device).manual_seed(seed) if self.denoise else None
        inputs = self.corrupt(images, generator)
        reconstructions = self(inputs)
        n = len(images)
        self.log_eval_loss(split, self.loss(reconstructions, images), n)
        # updated every step, computed and logged once an epoch (_log_quality)
        getattr(self, f"{split}_quality").update(reconstructions, images)
        if self.denoise:
            getattr(self, f"{split}_noisy").update(inputs, images)
        return {"images": images, "inputs": inputs, "reconstructions": reconstructions, "targets": targets}

    def _begin_epoch(self, split: str) -> None:
        super()._begin_epoch(split)
        for name in (f"{split}_quality", f"{split}_noisy"):
            if hasattr(self, name):
                getattr(self, name).reset()

    def _log_quality(self, split: str) -> None:
        """PSNR and SSIM of the epoch (and of the noisy inputs, and the gain, in denoise mode)."""
        quality = getattr(self, f"{split}_quality")
        gain = None
        if self.denoise and quality["psnr"].update_called:  # computed before logging resets them
            gain = quality["psnr"].compute() - getattr(self, f"{split}_noisy")["psnr"].compute()
        self.log_epoch_metrics(quality, prog_bar=split == "val")
        if self.denoise:
            self.log_epoch_metrics(getattr(self, f"{split}_noisy"))
        if gain is not None:
            self.log(f"{split}/psnr_gain", gain, sync_dist=True)  # the same in every process, as above
