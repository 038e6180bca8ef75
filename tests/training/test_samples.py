"""The augmented training samples reach TensorBoard as one image grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.callbacks.samples import AugmentationSamples, augmented_grid
from cnnlab.data import transforms as T


def test_grid_undoes_the_normalisation() -> None:
    images = torch.zeros(5, 1, 8, 8)  # the mean itself, once normalised
    grid = augmented_grid(images, mean=[0.25], std=[0.5], nrow=4)
    assert grid.shape == (3, 2 * 8 + 3 * 2, 4 * 8 + 5 * 2)
    torch.testing.assert_close(grid[:, 2:10, 2:10], torch.full((3, 8, 8), 0.25))


def test_callback_writes_the_first_training_batch(tmp_path: Path, digits, make_task, make_trainer) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    trainer = make_trainer(
        max_steps=2, limit_val_batches=0, logger=logger, callbacks=[AugmentationSamples(num_samples=16)]
    )
    trainer.fit(make_task(cutmix_alpha=1.0), datamodule=digits(augmentation=T.basic))
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == [AugmentationSamples.tag]
    (image,) = events.Images(AugmentationSamples.tag)  # once, not once per batch
    assert (image.width, image.height) == (8 * 16 + 9 * 2, 2 * 16 + 3 * 2)


def test_callback_does_nothing_without_tensorboard(digits, make_task, make_trainer) -> None:
    callback = AugmentationSamples()
    trainer = make_trainer(max_steps=1, limit_val_batches=0, callbacks=[callback])
    trainer.fit(make_task(), datamodule=digits())
    assert callback.logged


def test_default_callbacks_include_it(make_cfg: Callable[..., DictConfig]) -> None:
    callback = instantiate(make_cfg().callbacks.augmented_samples)
    assert isinstance(callback, AugmentationSamples)
