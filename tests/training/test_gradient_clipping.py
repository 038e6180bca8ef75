"""Gradient clipping through ``trainer.gradient_clip_val`` bounds the gradient the optimiser steps with."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


class GradientNorms(L.Callback):
    """Records the total gradient norm of every step: the gradient the optimiser stepped with, clipped."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        # gradients stay until the next step's zero_grad
        grads = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))


def test_config_value_clips_the_gradient_norm(make_cfg: Callable[..., DictConfig], digits, make_task) -> None:
    cfg = make_cfg("trainer.gradient_clip_val=0.01", "trainer.max_epochs=1")
    norms = GradientNorms()
    trainer = instantiate(
        cfg.trainer, callbacks=[norms], logger=False, limit_train_batches=3, limit_val_batches=0
    )
    assert trainer.gradient_clip_val == 0.01
    trainer.fit(make_task(), datamodule=digits())
    assert len(norms.norms) == 3 and max(norms.norms) <= 0.01 * (1 + 1e-4)
