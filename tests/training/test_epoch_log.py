"""The epoch line: each metric once, validation first, no per-step or per-class values."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from cnnlab.callbacks.epoch_log import EpochLog


def test_a_metric_logged_per_step_and_per_epoch_shows_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = {
        "train/loss": torch.tensor(2.0),  # the last step's value
        "train/loss_epoch": torch.tensor(1.5),
        "train/loss_step": torch.tensor(2.0),
        "val/miou": torch.tensor(0.25),
        "val/map_per_class/cat": torch.tensor(0.5),
        "val/confusion": torch.zeros(2, 2),
    }
    trainer = SimpleNamespace(
        sanity_checking=False, is_global_zero=True, callback_metrics=metrics, max_epochs=3, current_epoch=0
    )
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        EpochLog().on_train_epoch_end(trainer, None)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("epoch 1/3  val/miou 0.25  train/loss 1.5  (")
