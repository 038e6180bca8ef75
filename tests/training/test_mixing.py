"""MixUp and CutMix mix training batches into soft labels; evaluation batches stay as they are."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.data.mixing import MixCollate, mix_collate


def items(n: int = 8, channels: int = 3) -> list[tuple[torch.Tensor, int]]:
    """Distinct images with distinct labels, so that any mixing shows."""
    torch.manual_seed(0)
    return [(torch.randn(channels, 16, 16), i) for i in range(n)]


@pytest.mark.parametrize(
    "alphas", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}]
)
def test_collate_mixes_images_and_gives_soft_labels(alphas: dict[str, float]) -> None:
    batch = items()
    collate = mix_collate(10, alphas)
    assert isinstance(collate, MixCollate)
    plain = torch.stack([image for image, _ in batch])
    for _ in range(3):
        images, labels = collate(batch)
        assert images.shape == plain.shape and labels.shape == (8, 10) and labels.dtype == torch.float32
        torch.testing.assert_close(labels.sum(1), torch.ones(8))
        assert (labels > 0).sum(1).max() == 2  # each image is mixed with one other
        assert not torch.equal(images, plain)


def test_no_alpha_means_no_collate() -> None:
    assert mix_collate(10, None) is None
    assert mix_collate(10, {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}) is None


def test_mix_config_mistakes_say_what_to_change() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['mixup'\].*mixup_alpha"):
        mix_collate(10, {"mixup": 0.2})
    with pytest.raises(ValueError, match="mix.cutmix_alpha=-1.0"):
        mix_collate(10, {"cutmix_alpha": -1.0})


def test_only_the_training_loader_mixes(digits) -> None:
    dm = digits(batch_size=16, mix={"mixup_alpha": 0.4, "cutmix_alpha": 1.0})
    dm.setup("fit")
    _, train_labels = next(iter(dm.train_dataloader()))
    assert train_labels.shape == (16, 10) and train_labels.dtype == torch.float32
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        _, labels = next(iter(loader))
        assert labels.shape == (16,) and labels.dtype == torch.long


def test_mix_block_of_the_config_reaches_the_datamodule(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("mix.cutmix_alpha=1.0")
    # what train.build passes to the datamodule
    mix = OmegaConf.to_container(cfg.mix)
    dm = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation), mix=mix)
    assert isinstance(dm.train_collate, MixCollate)
    assert instantiate(make_cfg().data, mix=OmegaConf.to_container(make_cfg().mix)).train_collate is None


def test_task_trains_on_mixed_batches(digits, make_task, make_trainer) -> None:
    task = make_task()
    trainer = make_trainer(limit_train_batches=3, limit_val_batches=1)
    trainer.fit(task, datamodule=digits(mix={"mixup_alpha": 0.2, "cutmix_alpha": 1.0}))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss_step"]) and "val/acc" in metrics
    assert "train/acc" not in metrics  # soft labels have no accuracy
