"""The training loss a user watches: every step on a progress bar, whatever the logging interval."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import pytest

from cnnlab.train import build


class StepLosses(L.Callback):
    """What the progress bar shows of the training loss after each step, beside the step's loss."""

    def __init__(self) -> None:
        self.shown: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        self.losses.append(float(outputs["loss"]))
        self.shown.append(float(trainer.progress_bar_metrics["train/loss_step"]))


def test_a_progress_bar_shows_every_steps_loss(make_cfg, make_trainer) -> None:
    cfg = make_cfg("data.batch_size=16")
    datamodule, task = build(cfg)
    seen = StepLosses()
    # logged every 50 steps: without the bar none of these 3 steps would be logged
    trainer = make_trainer(
        enable_progress_bar=True,
        log_every_n_steps=50,
        limit_train_batches=3,
        limit_val_batches=1,
        callbacks=[seen],
    )
    trainer.fit(task, datamodule=datamodule)
    assert len(seen.shown) == 3
    assert seen.shown == pytest.approx(seen.losses)
    assert "train/loss_epoch" in trainer.callback_metrics
