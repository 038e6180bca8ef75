"""A grid of augmented training images in TensorBoard: what the network actually sees."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor
from torchvision.utils import make_grid

from cnnlab.figures import denormalize, tensorboard


class AugmentationSamples(L.Callback):
    """Logs the first training batch of a run, after augmentation (and mixing), as an image grid."""

    tag = "train/augmented_samples"

    def __init__(self, num_samples: int = 32, nrow: int = 8) -> None:
        self.num_samples, self.nrow = num_samples, nrow
        self.logged = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the batch the model is about to train on, rather than one drawn for the purpose: no second loader
        # to start, no random numbers taken from the run, and MixUp / CutMix show as they are
        if self.logged:
            return
        self.logged = True
        writer = tensorboard(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(images, Tensor) or images.dim() != 4:
            return  # detection batches (lists of images) have their own figures
        datamodule = getattr(trainer, "datamodule", None)
        # the statistics the images were normalised with: none when the task keeps them in [0, 1]
        contract = datamodule.contract() if hasattr(datamodule, "contract") else {}
        mean, std = contract.get("mean", []), contract.get("std", [])
        grid = augmented_grid(images[: self.num_samples], mean, std, self.nrow)
        writer.add_image(self.tag, grid, trainer.global_step)


def augmented_grid(images: Tensor, mean: list[float], std: list[float], nrow: int = 8) -> Tensor:
    """Normalised images (N, C, H, W) as one displayable grid (3, H', W') in [0, 1]."""
    shown = torch.stack(
        [denormalize(image, mean, std).permute(2, 0, 1) for image in images.detach().float().cpu()]
    )
    return make_grid(shown, nrow=nrow, padding=2, pad_value=1.0)
