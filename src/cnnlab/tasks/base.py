"""What every task shares: the network, optimiser and scheduler wiring, and the checkpoint contract.

Hyper-parameters hold plain config values only (dicts, lists, numbers, strings), so checkpoints load with
torch's ``weights_only=True``; the network itself is passed in and never saved as a hyper-parameter.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import lightning.pytorch as L
from hydra.utils import instantiate
from torch import nn

from cnnlab import finetune


class BaseTask(L.LightningModule):
    """A LightningModule around a network built elsewhere; subclasses add the loss, metrics and steps."""

    kind: ClassVar[str] = ""

    def __init__(
        self,
        net: nn.Module,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        #: preprocessing, class names and input shape: written into every checkpoint for export and predict
        self.contract: dict[str, Any] = {}

    def forward(self, x: Any) -> Any:
        return self.net(x)

    # --- optimisation ------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        opt_cfg = dict(self.hparams.optimizer)
        groups = finetune.parameter_groups(self.net, float(opt_cfg["lr"]), self.hparams.finetune or {})
        # partial first: Hydra would turn the parameter groups into configs
        optimizer = instantiate(opt_cfg, _partial_=True)(groups)
        sched_cfg = copy.deepcopy(dict(self.hparams.scheduler or {}))
        if not sched_cfg.get("scheduler"):
            return optimizer
        target = sched_cfg.pop("scheduler")
        # schedules that count steps (OneCycle) learn the run's length from the trainer
        if "total_steps" in target and target["total_steps"] is None:
            target["total_steps"] = int(self.trainer.estimated_stepping_batches)
        if "max_lr" in target and target["max_lr"] is None:
            target["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        scheduler = instantiate(target, _partial_=True)(optimizer)
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
