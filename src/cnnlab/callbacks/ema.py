"""An exponential moving average (EMA) of the weights, on Lightning's ``WeightAveraging``.

Lightning swaps the average in for every validation, writes it as the checkpoint's ``state_dict`` (the raw
weights go to ``current_model_state``, to resume from) and copies it into the model when training ends; so
the best checkpoint is chosen on, tested with and exported with the averaged weights.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WarmupEMA:
    """The EMA update of ``get_ema_multi_avg_fn``, with the decay ramped up as ``(1 + n) / (10 + n)``."""

    def __init__(self, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup

    def __call__(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        # without warm-up a course run of a few hundred steps would keep most of its untrained start
        # (0.999 ** 300 = 0.74); the ramp is timm's and TensorFlow's. n comes from the AveragedModel's own
        # counter, which checkpoints carry, so a resumed run continues the same ramp
        n = int(num_averaged)
        decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        get_ema_multi_avg_fn(decay)(averaged, current, num_averaged)


class EMA(WeightAveraging):
    """An EMA of the weights (parameters and batch-norm statistics), updated after every optimiser step."""

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = True,
        start_step: int = 0,
        device: str | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(
                f"callbacks.ema.decay={decay}: give a value strictly between 0 and 1, e.g. 0.999"
            )
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=WarmupEMA(decay, warmup))
        self.decay, self.start_step = decay, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After every optimiser step from ``start_step`` on; never at epoch ends."""
        return step_idx is not None and step_idx >= self.start_step

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning 2.6 puts the raw weights back into the model whenever an average exists, so
        # `trainer.test(ckpt_path="best")` after `fit` in the same process would test the raw weights. Only a
        # resumed fit needs them; validate, test and predict keep the checkpoint's state_dict, the average.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
