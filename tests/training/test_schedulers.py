"""Every option of the scheduler group drives the learning rate of every parameter group, stage by stage."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as L
import pytest
from omegaconf import DictConfig, OmegaConf

from cnnlab import CONF_DIR
from cnnlab.errors import ConfigError
from cnnlab.models.simple_cnn import SimpleCNN
from cnnlab.tasks.classification import ClassificationTask

SCHEDULERS = sorted(p.stem for p in (CONF_DIR / "scheduler").glob("*.yaml"))
BASE_LR = 0.1


class GroupRates(L.Callback):
    """The learning rate of every parameter group, before every training step."""

    def __init__(self) -> None:
        self.steps: list[list[float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.steps.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def fit(cfg: DictConfig, digits, make_trainer, epochs: int, batches: int) -> tuple[ClassificationTask, list]:
    net = SimpleCNN(num_classes=10, in_channels=1, image_size=16, widths=(8, 16), head_hidden=32)
    task = ClassificationTask(
        net,
        num_classes=10,
        optimizer={"_target_": "torch.optim.SGD", "lr": BASE_LR, "momentum": 0.9},
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        finetune_cfg=OmegaConf.to_container(cfg.finetune, resolve=True),
    )
    rates = GroupRates()
    trainer = make_trainer(
        max_epochs=epochs, limit_train_batches=batches, limit_val_batches=2, callbacks=[rates]
    )
    trainer.fit(task, datamodule=digits())
    return task, rates.steps


def test_every_option_is_tested() -> None:
    assert set(SCHEDULERS) == {"none", "cosine", "step", "plateau", "onecycle", "exponential"}


def test_onecycle_peaks_at_each_groups_own_rate(
    make_cfg: Callable[..., DictConfig], digits, make_trainer
) -> None:
    # discriminative rates: every stage its own group, its own peak
    cfg = make_cfg("scheduler=onecycle", "finetune=discriminative", "trainer.max_epochs=2")
    _, steps = fit(cfg, digits, make_trainer, epochs=2, batches=4)
    assert len(steps) == 8
    base = [BASE_LR * 0.1 * 0.8 ** (2 - i) for i in range(2)] + [BASE_LR]  # two stages, then the head
    first, peak = steps[0], [max(group) for group in zip(*steps, strict=True)]
    assert first == pytest.approx([b / 25 for b in base])  # OneCycleLR starts at max_lr / div_factor
    assert peak == pytest.approx(base, rel=0.05)
    assert steps[-1][-1] < first[-1]  # and anneals below its start


def test_onecycle_too_short_to_warm_up_is_a_config_error(
    make_cfg: Callable[..., DictConfig], digits, make_trainer
) -> None:
    # 4 steps with pct_start 0.25: a warm-up of one step, on which OneCycleLR would divide by zero
    cfg = make_cfg("scheduler=onecycle", "trainer.max_epochs=2")
    with pytest.raises(ConfigError, match="pct_start=0.25 of 4 optimiser steps is a warm-up of one step"):
        fit(cfg, digits, make_trainer, epochs=2, batches=2)


def test_cosine_decays_over_the_configured_epochs(
    make_cfg: Callable[..., DictConfig], digits, make_trainer
) -> None:
    cfg = make_cfg("scheduler=cosine", "trainer.max_epochs=2")
    _, steps = fit(cfg, digits, make_trainer, epochs=2, batches=2)
    # per epoch: the first epoch at the base rate, the second at half of it (T_max = 2 epochs)
    assert [s[-1] for s in steps] == pytest.approx([BASE_LR, BASE_LR, BASE_LR / 2, BASE_LR / 2])


def test_step_divides_after_step_size_epochs(
    make_cfg: Callable[..., DictConfig], digits, make_trainer
) -> None:
    cfg = make_cfg("scheduler=step", "scheduler.scheduler.step_size=1", "scheduler.scheduler.gamma=0.5")
    _, steps = fit(cfg, digits, make_trainer, epochs=3, batches=1)
    assert [s[-1] for s in steps] == pytest.approx([BASE_LR, BASE_LR / 2, BASE_LR / 4])


def test_exponential_multiplies_by_gamma_every_epoch_or_step(
    make_cfg: Callable[..., DictConfig], digits, make_trainer
) -> None:
    cfg = make_cfg("scheduler=exponential", "scheduler.scheduler.gamma=0.5")
    _, steps = fit(cfg, digits, make_trainer, epochs=2, batches=2)
    assert [s[-1] for s in steps] == pytest.approx([BASE_LR, BASE_LR, BASE_LR / 2, BASE_LR / 2])
    cfg = make_cfg("scheduler=exponential", "scheduler.scheduler.gamma=0.5", "scheduler.interval=step")
    _, steps = fit(cfg, digits, make_trainer, epochs=1, batches=3)
    assert [s[-1] for s in steps] == pytest.approx([BASE_LR, BASE_LR / 2, BASE_LR / 4])


def test_plateau_watches_the_optimised_metric(
    make_cfg: Callable[..., DictConfig], digits, make_trainer
) -> None:
    # the first epoch sets the best score; with patience 0 and a threshold no score can beat, every later
    # epoch divides the rate by 10
    cfg = make_cfg(
        "scheduler=plateau",
        "scheduler.scheduler.patience=0",
        "+scheduler.scheduler.threshold=10.0",
        "optimized_metric=val/acc",
    )
    task, steps = fit(cfg, digits, make_trainer, epochs=4, batches=1)
    assert task.trainer.lr_scheduler_configs[0].monitor == "val/acc"
    assert [s[-1] for s in steps] == pytest.approx([BASE_LR, BASE_LR, BASE_LR / 10, BASE_LR / 100])


def test_none_keeps_the_rate(make_cfg: Callable[..., DictConfig], digits, make_trainer) -> None:
    _, steps = fit(make_cfg("scheduler=none"), digits, make_trainer, epochs=2, batches=2)
    assert all(s == [BASE_LR] * 3 for s in steps)
