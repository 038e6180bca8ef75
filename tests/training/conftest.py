"""Fixtures of the training tests: a tiny CNN task and the embedded digits, small enough for the CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import pytest

from cnnlab.data.digits import DigitsDataModule
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.tasks.classification import ClassificationTask


@pytest.fixture
def make_task() -> Callable[..., ClassificationTask]:
    """A classification task around a two-stage SimpleCNN for 16 px digits."""

    def _make(lr: float = 1e-3, **kwargs: Any) -> ClassificationTask:
        net = SimpleCNN(num_classes=10, in_channels=1, image_size=16, widths=(8, 16), head_hidden=32)
        optimizer = {"_target_": "torch.optim.AdamW", "lr": lr}
        return ClassificationTask(net, num_classes=10, optimizer=optimizer, figures=False, **kwargs)

    return _make


@pytest.fixture
def digits() -> Callable[..., DigitsDataModule]:
    """The embedded digits at 16 px; keyword arguments go to the datamodule."""

    def _make(**kwargs: Any) -> DigitsDataModule:
        kwargs.setdefault("image_size", 16)
        kwargs.setdefault("batch_size", 32)
        return DigitsDataModule(**kwargs)

    return _make


@pytest.fixture
def make_trainer(tmp_path: Any) -> Callable[..., L.Trainer]:
    """A quiet CPU trainer writing under tmp_path; keyword arguments override the defaults."""

    def _make(**kwargs: Any) -> L.Trainer:
        options: dict[str, Any] = {
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(tmp_path),
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "max_epochs": 1,
        }
        options.update(kwargs)
        return L.Trainer(**options)

    return _make
