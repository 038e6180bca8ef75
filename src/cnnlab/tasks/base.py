"""What every task shares: the network, optimiser and scheduler wiring, and the checkpoint contract.

Hyper-parameters hold plain config values only (dicts, lists, numbers, strings), so checkpoints load with
torch's ``weights_only=True``; the network itself is passed in and never saved as a hyper-parameter.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, ClassVar

import lightning.pytorch as L
from hydra.utils import instantiate
from torch import nn

from cnnlab import finetune

log = logging.getLogger(__name__)


class BaseTask(L.LightningModule):
    """A LightningModule around a network built elsewhere; subclasses add the loss, metrics and steps."""

    kind: ClassVar[str] = ""

    def __init__(
        self,
        net: nn.Module,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune_cfg: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.freezer = finetune.StageFreezer(net, finetune_cfg or {})
        #: preprocessing, class names and input shape: written into every checkpoint for export and predict
        self.contract: dict[str, Any] = {}

    def forward(self, x: Any) -> Any:
        return self.net(x)

    # --- freeze depth ------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> BaseTask:
        # Lightning calls train() every epoch and after every validation: frozen stages go back to eval
        super().train(mode)
        if mode:
            self.freezer.hold(self._epoch())
        return self

    def on_train_epoch_start(self) -> None:
        epoch = self._epoch()
        # each epoch's random draws (dropout, augmentation, worker seeds) follow from (seed, epoch) alone,
        # so a resumed run draws what the uninterrupted one did, whatever ran before this epoch
        seed = int((self.hparams.run_config or {}).get("seed", 0))
        L.seed_everything(seed * 1_000 + epoch, workers=True, verbose=False)
        if epoch == 0 or self.freezer.frozen_at(epoch) != self.freezer.frozen_at(epoch - 1):
            log.info("finetune: %s", self.freezer.describe(epoch))
        self.train()  # a stage released this epoch goes back to train mode, the frozen ones to eval
        self.log("finetune/frozen_stages", float(self.freezer.frozen_at(epoch)), on_step=False, on_epoch=True)

    def on_after_backward(self) -> None:
        self.freezer.drop_gradients(self._epoch())

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self._trainer is not None else 0

    # --- optimisation ------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        opt_cfg = dict(self.hparams.optimizer)
        groups = finetune.parameter_groups(self.net, float(opt_cfg["lr"]), self.hparams.finetune_cfg or {})
        # partial first: Hydra would turn the parameter groups into configs
        optimizer = instantiate(opt_cfg, _partial_=True)(groups)
        sched_cfg = copy.deepcopy(dict(self.hparams.scheduler or {}))
        if not sched_cfg.get("scheduler"):
            return optimizer
        target = dict(sched_cfg.pop("scheduler"))
        # schedules that count steps (OneCycle) learn the run's length from the trainer, and their peak rates
        # from the parameter groups; passed at call time, so Hydra does not turn the list into a ListConfig
        filled: dict[str, Any] = {}
        if "total_steps" in target and target["total_steps"] is None:
            filled["total_steps"] = int(self.trainer.estimated_stepping_batches)
        if "max_lr" in target and target["max_lr"] is None:
            filled["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        for key in filled:
            del target[key]
        scheduler = instantiate(target, _partial_=True)(optimizer, **filled)
        lr_scheduler = {"scheduler": scheduler, "interval": sched_cfg.get("interval", "epoch")}
        if sched_cfg.get("monitor"):
            lr_scheduler["monitor"] = sched_cfg["monitor"]
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    # --- checkpoint contract -----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "contract"):
            self.contract = datamodule.contract()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cnnlab"] = {"contract": self.contract, "task": self.kind}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.contract = checkpoint.get("cnnlab", {}).get("contract", {})
