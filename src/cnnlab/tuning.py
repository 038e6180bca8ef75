"""Lightning's learning-rate range test before training: plot the curve, use and log its suggestion."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.tuner import Tuner

from cnnlab.errors import CnnlabError
from cnnlab.figures import tensorboard  # which also draws the curve off screen

log = logging.getLogger(__name__)

#: points left out at the start: Lightning's smoothed loss starts from zero and is biased low there
SKIP_BEGIN = 10


class LearningRateFinderError(CnnlabError, RuntimeError):
    """The range test produced no learning rate to suggest."""


def find_learning_rate(
    trainer: L.Trainer,
    task: L.LightningModule,
    datamodule: L.LightningDataModule,
    output_dir: str | Path,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_training: int = 100,
    early_stop_threshold: float | None = 4.0,
) -> float:
    """Run the range test, save ``lr_find.png``, and set the suggested rate as the task's ``optimizer.lr``."""
    current = float(task.hparams.optimizer["lr"])
    if trainer.fast_dev_run:  # Lightning skips the test then; so do we, and keep the configured rate
        log.warning("tuner.lr_find: skipped under fast_dev_run; keeping optimizer.lr=%g", current)
        return current
    # update_attr=False: the rate lives in hparams.optimizer, which configure_optimizers reads for the fit.
    # Lightning saves the weights and optimiser state before the test and restores them after it.
    finder = Tuner(trainer).lr_find(
        task,
        datamodule=datamodule,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_training,
        early_stop_threshold=early_stop_threshold,
        update_attr=False,
    )
    lrs, losses = (finder.results["lr"], finder.results["loss"]) if finder is not None else ([], [])
    if 0 < len(lrs) < num_training:
        # Lightning reports every short test as a diverging loss; the run's limits are as likely a cause
        log.warning(
            "tuner.lr_find: the range test stopped after %d of %d steps, at lr=%.3g: the loss diverged, or "
            "trainer.max_epochs / trainer.limit_train_batches left too few batches",
            len(lrs),
            num_training,
            lrs[-1],
        )
    best = steepest_descent(lrs, losses)
    if lrs and trainer.is_global_zero:
        save_curve(lrs, losses, best, Path(output_dir) / "lr_find.png", trainer)
    if best is None:
        raise LearningRateFinderError(
            f"tuner.lr_find: the learning-rate finder gave no suggestion after {len(lrs)} steps; it needs at "
            "least 13 finite losses. Give it more training batches (trainer.limit_train_batches, "
            "trainer.max_epochs, a smaller data.batch_size), or set tuner.lr_find=false and choose "
            "optimizer.lr yourself"
        )
    suggestion = float(lrs[best])
    task.hparams.optimizer["lr"] = suggestion
    log.info("tuner.lr_find: optimizer.lr %g -> %g (suggested)", current, suggestion)
    for logger in trainer.loggers:
        logger.log_metrics({"tune/lr_suggestion": suggestion}, step=0)
    return suggestion


def steepest_descent(
    lrs: Sequence[float], losses: Sequence[float], skip_begin: int = SKIP_BEGIN, skip_end: int = 1
) -> int | None:
    """Index of the rate where the loss falls fastest per decade of rate; None with too few finite points."""
    # Lightning's own suggestion (2.6) differentiates against the rate itself although the rates are
    # log-spaced, which favours the smallest rates (Lightning issue #21141); the slope per decade does not
    index = torch.arange(len(losses))[skip_begin : len(losses) - skip_end]
    lr = torch.tensor(list(lrs), dtype=torch.float64)[index]
    loss = torch.tensor(list(losses), dtype=torch.float64)[index]
    keep = torch.isfinite(loss) & (lr > 0)
    if int(keep.sum()) < 2:
        return None
    slope = torch.gradient(loss[keep], spacing=[lr[keep].log10()])[0]
    return int(index[keep][slope.argmin()])


def save_curve(
    lrs: Sequence[float], losses: Sequence[float], best: int | None, path: Path, trainer: L.Trainer
) -> None:
    """Write the loss-versus-rate curve, suggestion marked, to ``path`` and TensorBoard (``tune/lr_find``)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    start = SKIP_BEGIN if len(lrs) > 2 * SKIP_BEGIN else 0
    ax.plot(lrs[start:], losses[start:])
    if best is not None:
        ax.plot(lrs[best], losses[best], "o", color="red", markersize=8, label=f"suggestion {lrs[best]:.3g}")
        ax.legend()
    ax.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="smoothed training loss",
        title="learning-rate range test",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    writer = tensorboard(trainer)
    if writer is not None:
        writer.add_figure("tune/lr_find", fig, global_step=0)  # closes the figure
    else:
        plt.close(fig)
    log.info("tuner.lr_find: curve written to %s", path)
