"""The learning-rate finder writes its curve, sets the task's rate and leaves the trainer ready to fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.tuning import LearningRateFinderError, find_learning_rate, steepest_descent


def test_finder_sets_the_rate_and_the_fit_uses_it(tmp_path: Path, digits, make_task, make_trainer) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    # max_steps, not limit_train_batches: the range test runs under the trainer's batch limits
    trainer = make_trainer(max_steps=2, limit_val_batches=1, logger=logger)
    task, datamodule = make_task(lr=1e-3), digits()
    before = {k: v.clone() for k, v in task.state_dict().items()}

    lr = find_learning_rate(trainer, task, datamodule, tmp_path / "run", num_training=20)

    assert lr > 0 and task.hparams.optimizer["lr"] == lr
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 0
    # the range test trained the network; Lightning put the initial weights back
    assert all(torch.equal(v, task.state_dict()[k]) for k, v in before.items())
    trainer.fit(task, datamodule=datamodule)
    assert trainer.global_step == 2 and trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "tune/lr_find" in events.Tags()["images"]
    assert events.Scalars("tune/lr_suggestion")[0].value == pytest.approx(lr)


def test_too_few_steps_is_a_clear_error(tmp_path: Path, digits, make_task, make_trainer) -> None:
    with pytest.raises(
        LearningRateFinderError, match="no suggestion after 5 steps.*limit_train_batches.*tuner.lr_find=false"
    ):
        find_learning_rate(make_trainer(), make_task(), digits(), tmp_path, num_training=5)


def test_fast_dev_run_keeps_the_configured_rate(tmp_path: Path, digits, make_task, make_trainer) -> None:
    task = make_task(lr=3e-3)
    assert find_learning_rate(make_trainer(fast_dev_run=True), task, digits(), tmp_path) == 3e-3
    assert not (tmp_path / "lr_find.png").exists()


def test_suggestion_is_the_steepest_fall_per_decade() -> None:
    lrs = torch.logspace(-7, 0, 100, dtype=torch.float64)
    # flat, a fall centred on 1e-2, then divergence; plus a gentle early slope that a gradient against the
    # rate itself (not its logarithm) would rank steepest
    losses = 2.3 - 0.01 * lrs.log10().clamp(max=-4) - torch.sigmoid(3 * (lrs.log10() + 2)) + 5 * lrs**2
    best = steepest_descent(lrs.tolist(), losses.tolist())
    assert best is not None and 1e-2 / 2 < lrs[best] < 1e-2 * 2
    assert steepest_descent(lrs[:12].tolist(), losses[:12].tolist()) is None
