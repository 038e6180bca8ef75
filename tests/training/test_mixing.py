"""MixUp and CutMix mix training batches into soft labels; evaluation batches stay as they are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from omegaconf import DictConfig

from cnnlab.tasks.mixing import BatchMix, batch_mix
from cnnlab.train import build


def batch(n: int = 8, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct images with distinct labels, so that any mixing shows."""
    torch.manual_seed(0)
    return torch.randn(n, channels, 16, 16), torch.arange(n)


@pytest.mark.parametrize(
    "alphas", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}]
)
def test_mixer_mixes_images_and_gives_soft_labels(alphas: dict[str, float]) -> None:
    plain, labels = batch()
    mix = batch_mix(10, **alphas)
    assert isinstance(mix, BatchMix)
    for _ in range(3):
        images, soft = mix(plain.clone(), labels)
        assert images.shape == plain.shape and soft.shape == (8, 10) and soft.dtype == torch.float32
        torch.testing.assert_close(soft.sum(1), torch.ones(8))
        assert (soft > 0).sum(1).max() == 2  # each image is mixed with one other
        assert not torch.equal(images, plain)


def test_no_alpha_means_no_mixer() -> None:
    assert batch_mix(10) is None and batch_mix(10, 0.0, 0.0) is None


def test_a_negative_alpha_names_the_key() -> None:
    with pytest.raises(ValueError, match="task.cutmix_alpha=-1.0"):
        batch_mix(10, cutmix_alpha=-1.0)


def test_only_training_batches_are_mixed(make_cfg: Callable[..., DictConfig], make_trainer: Any) -> None:
    cfg = make_cfg("task.mixup_alpha=0.4", "task.cutmix_alpha=1.0", "data.batch_size=16")
    datamodule, task = build(cfg)
    seen: dict[str, torch.Tensor] = {}
    original = task.training_step

    def spy(batch: Any, batch_idx: int) -> torch.Tensor:
        seen["train"] = batch[1]
        return original(batch, batch_idx)

    task.training_step = spy  # type: ignore[method-assign]
    trainer = make_trainer(limit_train_batches=2, limit_val_batches=1, limit_test_batches=1)
    trainer.fit(task, datamodule=datamodule)
    assert seen["train"].shape == (16, 10) and seen["train"].dtype == torch.float32
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss_epoch"]) and "val/acc" in metrics
    assert "train/acc" not in metrics  # soft labels have no accuracy
    labels = next(iter(datamodule.val_dataloader()))[1]
    assert labels.shape == (16,) and labels.dtype == torch.long


def test_mixing_keys_are_in_the_task_and_its_hparams_row(make_cfg: Callable[..., DictConfig]) -> None:
    _, task = build(make_cfg("task.cutmix_alpha=1.0"))
    assert isinstance(task.mix, BatchMix)
    assert task.dashboard_hparams()["cutmix_alpha"] == 1.0
    assert build(make_cfg())[1].mix is None
