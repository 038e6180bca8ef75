"""EMA of the weights: validated, checkpointed and tested with the average; checkpoints load weights-only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from cnnlab.callbacks.ema import EMA, WarmupEMA


def test_warmup_ramps_the_decay() -> None:
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    WarmupEMA(0.999)(averaged, current, torch.tensor(0))  # decay (1 + 0) / (10 + 0) = 0.1
    torch.testing.assert_close(averaged[0], torch.full((3,), 0.9))
    averaged = [torch.zeros(3)]
    WarmupEMA(0.999, warmup=False)(averaged, current, torch.tensor(0))
    torch.testing.assert_close(averaged[0], torch.full((3,), 0.001))


def test_decay_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="callbacks.ema.decay=1.0"):
        EMA(decay=1.0)


def test_ema_config_adds_to_the_default_callbacks(make_cfg: Callable[..., DictConfig]) -> None:
    callbacks = make_cfg("callbacks=[default,ema]").callbacks
    assert "checkpoint" in callbacks and isinstance(instantiate(callbacks.ema), EMA)


def test_checkpoint_and_test_use_the_averaged_weights(
    tmp_path: Path, digits, make_task, make_trainer
) -> None:
    ema = EMA(decay=0.9, warmup=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="best", monitor="val/acc", mode="max")
    trainer = make_trainer(
        limit_train_batches=6,
        limit_val_batches=2,
        limit_test_batches=1,
        enable_checkpointing=True,
        callbacks=[ema, checkpoint],
    )
    task, datamodule = make_task(lr=1e-2), digits()
    trainer.fit(task, datamodule=datamodule)

    saved = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    averaged, raw = saved["state_dict"], saved["current_model_state"]
    assert averaged.keys() == raw.keys()
    weights = [k for k in averaged if k.endswith("weight")]
    assert all(not torch.equal(averaged[k], raw[k]) for k in weights)
    # the model ends training holding the average
    assert all(torch.equal(task.state_dict()[k], averaged[k]) for k in weights)

    trainer.test(task, datamodule=datamodule, ckpt_path="best")
    assert all(torch.equal(task.state_dict()[k], averaged[k]) for k in weights)


class WeightsAtStart(L.Callback):
    """Records the weights a fit starts training from."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_resumed_fit_trains_the_raw_weights_on(tmp_path: Path, digits, make_task, make_trainer) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(
        limit_train_batches=4,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[EMA(decay=0.9), checkpoint],
    )
    trainer.fit(make_task(lr=1e-2), datamodule=digits())
    saved = torch.load(checkpoint.last_model_path, map_location="cpu", weights_only=True)
    assert int(saved["averaging_state"]["n_averaged"]) == 4

    ema, start = EMA(decay=0.9), WeightsAtStart()
    resumed = make_trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=1, callbacks=[ema, start])
    resumed.fit(make_task(lr=1e-2), datamodule=digits(), ckpt_path=checkpoint.last_model_path)
    raw = saved["current_model_state"]
    assert all(torch.equal(start.weights[k], raw[k]) for k in raw if k.endswith("weight"))
    assert ema._average_model is not None and int(ema._average_model.n_averaged) == 5
