"""The losses and metrics a user watches: the training loss every step on a progress bar, whatever the logging
interval; epoch values computed from batched updates that match step-by-step ones."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

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


def test_validation_and_test_losses_are_the_batch_weighted_means_of_their_epoch(
    make_cfg, make_trainer
) -> None:
    # 144 validation and 359 test images in batches of 50: uneven last batches weigh less
    cfg = make_cfg("data.batch_size=50")
    datamodule, task = build(cfg)
    trainer = make_trainer(limit_train_batches=3, num_sanity_val_steps=2, max_epochs=2)
    trainer.fit(task, datamodule=datamodule)
    logged = float(trainer.callback_metrics["val/loss"])
    trainer.test(task, datamodule=datamodule)
    tested = float(trainer.callback_metrics["test/loss"])

    task.eval()
    with torch.no_grad():
        for loader, shown in ((datamodule.val_dataloader(), logged), (datamodule.test_dataloader(), tested)):
            sums = [(float(F.cross_entropy(task(x), y)) * len(y), len(y)) for x, y in loader]
            assert len({n for _, n in sums}) == 2  # the last batch is smaller
            assert shown == pytest.approx(sum(s for s, _ in sums) / sum(n for _, n in sums), rel=1e-5)


def test_metric_updates_wait_and_compute_what_step_by_step_updates_do(make_cfg, monkeypatch) -> None:
    from cnnlab.tasks import base

    monkeypatch.setattr(base, "PENDING_VALUES", 200)  # 10 classes: the third batch of 8 hands them over
    _, task = build(make_cfg())
    reference = task.val_metrics.clone()
    generator = torch.Generator().manual_seed(0)
    for step in range(7):
        scores = torch.randn(8, 10, generator=generator, requires_grad=True)
        labels = torch.randint(0, 10, (8,), generator=generator)
        task.update_metrics(task.val_metrics, scores, labels)
        reference.update(scores.detach(), labels)
        handed = any(m.update_called for m in task.val_metrics.values())
        assert handed == (step >= 2), step
    task.flush_metrics(task.val_metrics)  # what log_epoch_metrics does before computing
    got, expected = task.val_metrics.compute(), reference.compute()
    assert got.keys() == expected.keys() and {"val/acc", "val/f1", "val/acc_top5"} <= set(got)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_autoencoder_quality_is_the_epochs_psnr_and_ssim_over_every_validation_image(
    make_cfg, make_trainer
) -> None:
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    cfg = make_cfg(
        "experiment=ae_denoise_digits", "model.widths=[4,8]", "data.train_per_class=20", "data.batch_size=32"
    )
    datamodule, task = build(cfg)
    # the sanity check's two batches and the first epoch's must not reach the second epoch's values
    trainer = make_trainer(limit_train_batches=2, num_sanity_val_steps=2, max_epochs=2)
    trainer.fit(task, datamodule=datamodule)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    task.eval()
    psnr, ssim = PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)
    noisy = PeakSignalNoiseRatio(data_range=1.0)
    with torch.no_grad():
        for i, (images, _) in enumerate(datamodule.val_dataloader()):
            # the task's own noise for this batch: the same in every epoch
            generator = torch.Generator().manual_seed(int(cfg.seed) * 100_003 + i)
            inputs = task.corrupt(images, generator)
            psnr.update(task(inputs), images)
            ssim.update(task(inputs), images)
            noisy.update(inputs, images)
    assert logged["val/psnr"] == pytest.approx(float(psnr.compute()), rel=1e-5)
    assert logged["val/ssim"] == pytest.approx(float(ssim.compute()), rel=1e-5)
    assert logged["val/psnr_noisy"] == pytest.approx(float(noisy.compute()), rel=1e-5)
    assert logged["val/psnr_gain"] == pytest.approx(logged["val/psnr"] - logged["val/psnr_noisy"], abs=1e-4)
