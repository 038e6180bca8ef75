"""One line per epoch in the log: the progress a run piped to a file or a cluster job's output shows."""

from __future__ import annotations

import logging
import time

import lightning.pytorch as L
from torch import Tensor

log = logging.getLogger("cnnlab")


class EpochLog(L.Callback):
    """Logs each epoch's metrics and duration when its validation ends (or its training, without one)."""

    def __init__(self, max_metrics: int = 8) -> None:
        self.max_metrics = max_metrics
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        # a metric logged per step and per epoch comes as "x" and "x_epoch": shown once, as "x"
        metrics = {
            k.removesuffix("_epoch"): float(v)
            for k, v in sorted(trainer.callback_metrics.items(), key=lambda item: item[0].endswith("_epoch"))
            if isinstance(v, Tensor)
            and v.numel() == 1
            and k.startswith(("train/", "val/"))
            and "_step" not in k
            and k.count("/") == 1  # per-class figures (val/map_per_class/<class>) are too many for a line
        }
        shown = sorted(metrics, key=lambda k: (not k.startswith("val/"), k))[: self.max_metrics]
        text = "  ".join(f"{k} {metrics[k]:.4g}" for k in shown)
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        duration = time.perf_counter() - self.started
        log.info("epoch %d/%s  %s  (%.1f s)", trainer.current_epoch + 1, epochs, text, duration)
