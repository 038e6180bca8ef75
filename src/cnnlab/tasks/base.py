"""What every task shares: the network, optimiser and scheduler wiring, freeze depth, the checkpoint contract.

A task subclass declares what is specific to it: ``samples`` (what it asks of the data), ``network_output``
(what its network must return), ``metrics`` (every metric it logs, each with its direction), ``serving`` (the
module that exports it and shows its predictions), and supplies its own TensorBoard figures as callbacks.
Generic code reads these declarations and names no task.

Hyper-parameters hold plain config values only (dicts, lists, numbers, strings), so checkpoints load with
torch's ``weights_only=True``; the network itself is passed in and never saved as a hyper-parameter.
"""

from __future__ import annotations

import copy
import importlib
import logging
import time
import warnings
from typing import Any, ClassVar

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from cnnlab import finetune
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.samples import SampleSpec

# Lightning warns at every fit that a task's batch-transfer hook (classification mixes batches after the
# transfer, segmentation checks masks before it) runs rather than the datamodule's; cnnlab's datamodules
# define none, so there is nothing to choose between
warnings.filterwarnings("ignore", message=r"You have overridden `on_(before|after)_batch_transfer` in `Light")

log = logging.getLogger(__name__)

SPLITS = ("train/", "val/", "test/", "best/")
#: how many values (scores) a metric collection's updates wait for before torchmetrics takes them in one
#: call: an update costs about 0.1 ms a metric on a CPU (a dozen kernel launches on a GPU) whatever the batch,
#: and the states are counts, so batched updates compute what step-by-step ones do. 4 MB of float scores
PENDING_VALUES = 1 << 20


class NonFiniteLossError(CnnlabError, FloatingPointError):
    """The training loss became NaN or infinite; the message gives the step and what to change."""


class BaseTask(L.LightningModule):
    """A LightningModule around a network built elsewhere; subclasses add the loss, metrics and steps."""

    #: the task's name, as its config option (``task=<name>``) spells it
    name: ClassVar[str] = ""
    #: what the task asks of the data (target keys, evaluation geometry, collate)
    samples: ClassVar[SampleSpec]
    #: what its network must return: a key of ``cnnlab.models.base.OUTPUTS``
    network_output: ClassVar[str] = ""
    #: every metric the task logs (without the split prefix), "max" when higher is better, else "min"
    metrics: ClassVar[dict[str, str]] = {"loss": "min"}
    #: options that act in some settings only: option -> (the setting's key, the values it acts with)
    active_when: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}
    #: the module (under ``cnnlab.serving``) that wraps the network for export and shows its predictions
    serving: ClassVar[str] = ""

    def __init__(
        self,
        net: nn.Module,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune_cfg: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
        figures: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.freezer = finetune.StageFreezer(net, finetune_cfg or {})
        #: preprocessing, class names and input shape: written into every checkpoint for export and predict
        self.contract: dict[str, Any] = {}
        #: what the divergence check keeps on the device: the first non-finite loss, the last finite one
        self._watch: dict[str, Tensor] | None = None
        self._first_step: float | None = None
        #: each split's epoch losses (weighted by batch size) and their count, summed on the device
        self._loss_sums: dict[str, tuple[list[str], Tensor, int]] = {}
        #: metric updates not yet handed to torchmetrics: id(collection) -> (batches, how many values)
        self._pending: dict[int, tuple[list[tuple[Tensor, ...]], int]] = {}

    @classmethod
    def metric_mode(cls, metric: str) -> str:
        """ "max" or "min": which way ``metric`` (``val/acc``, ``best/val/loss``) improves for this task."""
        name = metric
        while name.startswith(SPLITS):
            name = name.split("/", 1)[1]
        if name not in cls.metrics or not metric.startswith(SPLITS):
            known = ", ".join(f"val/{m}" for m in cls.metrics)
            raise ValueError(
                f"optimized_metric={metric} is not a metric that task={cls.name} logs; choose one of {known} "
                "(or their train/ and test/ forms)"
            )
        return cls.metrics[name]

    def forward(self, x: Any) -> Any:
        return self.net(x)

    # --- what a subclass may add -------------------------------------------------------------------------

    def figure_callbacks(self) -> list[L.Callback]:
        """The callbacks that draw this task's TensorBoard figures."""
        return []

    def dashboard_hparams(self) -> dict[str, Any]:
        """Task-specific hyper-parameters for TensorBoard's HPARAMS row (flat, fixed for the task)."""
        return {}

    def export_module(self) -> nn.Module:
        """The network wrapped for production by the task's serving module: preprocessing to output."""
        module = importlib.import_module(self.serving)
        return module.Exported(self.net, self.contract)

    def contract_extras(self) -> dict[str, Any]:
        """What the task adds to the checkpoint's contract (a threshold chosen on validation, say)."""
        return {}

    def configure_callbacks(self) -> list[L.Callback]:
        return self.figure_callbacks() if self.hparams.get("figures", True) else []

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
        self._begin_epoch("train")
        seed = int((self.hparams.run_config or {}).get("seed", 0))
        L.seed_everything(seed * 1_000 + epoch, workers=True, verbose=False)
        if epoch == 0 or self.freezer.frozen_at(epoch) != self.freezer.frozen_at(epoch - 1):
            log.info("finetune: %s", self.freezer.describe(epoch))
        self.train()  # a stage released this epoch goes back to train mode, the frozen ones to eval
        frozen = float(self.freezer.frozen_at(epoch))
        self.log("finetune/frozen_stages", frozen, on_step=False, on_epoch=True, sync_dist=True)

    def on_after_backward(self) -> None:
        self.freezer.drop_gradients(self._epoch())

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self._trainer is not None else 0

    # --- metrics: updated every step, computed once per epoch ------------------------------------------

    def log_train_loss(self, loss: Tensor, batch_size: int, **parts: Tensor) -> None:
        """The training loss: each step's value to the progress bar and, every ``log_every_n_steps``, to the
        loggers (``train/loss_step``); the epoch's mean, weighted by batch size, summed on the device and
        logged once at the epoch's end (``train/loss_epoch``, and ``train/loss_<part>`` for each of
        ``parts``). Lightning's ``self.log`` costs about a millisecond a call: it runs when a value is
        shown."""
        if self._trainer is None:  # a step called by hand: nothing to log to (as self.log)
            return
        self._add_losses("train", batch_size, loss=loss, **{f"loss_{k}": v for k, v in parts.items()})
        trainer = self.trainer
        shown = trainer.progress_bar_callback is not None or bool(trainer.fast_dev_run)
        # what Lightning itself asks before writing a step's values to the loggers
        written = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", True)
        if shown or written:
            self.log(
                "train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size
            )

    def log_eval_loss(self, split: str, loss: Tensor, batch_size: int) -> None:
        """A validation or test batch's loss: ``<split>/loss``, the epoch's mean weighted by batch size (what
        ``self.log`` would give), summed on the device and logged once at the epoch's end, across processes
        too."""
        if self._trainer is not None:
            self._add_losses(split, batch_size, loss=loss)

    def _add_losses(self, split: str, batch_size: int, **values: Tensor) -> None:
        sums = torch.stack([v.detach().float() for v in values.values()]) * batch_size
        held = self._loss_sums.get(split)
        if held is None:
            self._loss_sums[split] = (list(values), sums, batch_size)
        else:
            self._loss_sums[split] = (held[0], held[1] + sums, held[2] + batch_size)

    def _log_epoch_loss(self, split: str = "train") -> None:
        held = self._loss_sums.pop(split, None)
        if held is None:
            return
        names, total, count = held
        for name, mean in zip(names, total / count, strict=True):
            if split != "train":
                self.log(f"{split}/{name}", mean, prog_bar=True, batch_size=count, sync_dist=True)
                continue
            shown = name == "loss"
            self.log(
                f"train/{name}_epoch" if shown else f"train/{name}",
                mean,
                on_step=False,
                on_epoch=True,
                prog_bar=shown,
                batch_size=count,  # the mean's own weight: Lightning would guess it from the batch
                sync_dist=True,  # every process's mean, not the first process's alone
            )

    def _begin_epoch(self, split: str) -> None:
        # an epoch cut short (an interrupted run's, in a notebook) leaves no partial sums behind
        self._loss_sums.pop(split, None)
        metrics = getattr(self, f"{split}_metrics", None)
        if metrics is not None:
            self._pending.pop(id(metrics), None)
            metrics.reset()

    def update_metrics(self, metrics: Any, *values: Tensor) -> None:
        """``metrics.update(*values)``, batched: the values wait on the device, detached, until
        ``PENDING_VALUES`` of them are there or the metrics are computed (``log_epoch_metrics``)."""
        batches, count = self._pending.get(id(metrics), ([], 0))  # the task's own collections: ids stay
        batches.append(tuple(v.detach() for v in values))
        count += values[0].numel()
        self._pending[id(metrics)] = (batches, count)
        if count >= PENDING_VALUES:
            self.flush_metrics(metrics)

    def flush_metrics(self, metrics: Any) -> None:
        """Hand the updates ``update_metrics`` holds for ``metrics`` to torchmetrics, in one call."""
        batches, _ = self._pending.pop(id(metrics), ([], 0))
        if batches:
            metrics.update(*(torch.cat(parts) for parts in zip(*batches, strict=True)))

    def log_epoch_metrics(self, metrics: Any, prog_bar: bool = False) -> None:
        """Log what a torchmetrics collection gathered over the epoch, computed once (and synchronised across
        processes there), then reset it; a task's ``train_metrics``, ``val_metrics`` and ``test_metrics`` are
        logged so. Logging the metric objects every step costs milliseconds per step in Lightning."""
        self.flush_metrics(metrics)
        if not any(m.update_called for m in metrics.values()):
            return
        # epoch values, also when logged from on_train_batch_end (whose default is a step value, written to
        # loggers only every log_every_n_steps)
        # sync_dist: the values are already the same in every process (torchmetrics synchronised the states);
        # without it Lightning warns in every DDP run that they might not be
        self.log_dict(metrics.compute(), prog_bar=prog_bar, on_step=False, on_epoch=True, sync_dist=True)
        metrics.reset()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        trainer = self.trainer
        # at the epoch's last batch (or the run's last step) rather than in on_train_epoch_end, which runs
        # after the callbacks' (the epoch line would show the previous epoch's values)
        if trainer.is_last_batch or 0 < trainer.max_steps <= self.global_step:
            self._log_epoch_loss()
            train_metrics = getattr(self, "train_metrics", None)
            if train_metrics is not None:
                self.log_epoch_metrics(train_metrics)
        if self._first_step is not None:
            log.info(
                "compile: the first training step took %.1f s (torch.compile)",
                time.perf_counter() - self._first_step,
            )
            self._first_step = None

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_loss("val")
        if getattr(self, "val_metrics", None) is not None:
            self.log_epoch_metrics(self.val_metrics, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._begin_epoch("test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_loss("test")
        if getattr(self, "test_metrics", None) is not None:
            self.log_epoch_metrics(self.test_metrics)

    # --- speed on the device ---------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        run = self.hparams.run_config or {}
        layout = str(run.get("channels_last", "auto")).lower()
        if layout not in ("auto", "true", "false"):
            raise ValueError(f"channels_last={layout}: choose auto (on a GPU), true or false")
        if layout == "true" or (layout == "auto" and self.device.type == "cuda"):
            self.net.to(memory_format=torch.channels_last)
        if run.get("compile"):
            # in place: the state dict keeps its keys, so checkpoints and the export are unchanged
            self.net.compile()
            self._first_step = time.perf_counter()

    # --- divergence --------------------------------------------------------------------------------------

    def on_before_backward(self, loss: Tensor) -> None:
        # kept on the device: reading the loss on the host every step would synchronise a GPU each step
        loss = loss.detach()
        finite = torch.isfinite(loss)
        step = self.global_step  # a Python number: torch.where takes it without a copy to the device
        if self._watch is None:
            none = torch.tensor(-1, device=loss.device)
            self._watch = {"bad_step": none, "bad_loss": loss, "last_step": none, "last_loss": loss}
        w = self._watch
        first_bad = (w["bad_step"] < 0) & ~finite
        w["bad_step"] = torch.where(first_bad, step, w["bad_step"])
        w["bad_loss"] = torch.where(first_bad, loss, w["bad_loss"])
        w["last_step"] = torch.where(finite, step, w["last_step"])
        w["last_loss"] = torch.where(finite, loss, w["last_loss"])
        # on the CPU a check costs nothing; on a GPU every log_every_n_steps steps, and always before a
        # model is validated, checkpointed or exported (on_validation_epoch_start, on_train_epoch_end)
        every = int(getattr(self.trainer, "log_every_n_steps", 1) or 1) if self._trainer is not None else 1
        if loss.device.type == "cpu" or self.global_step % every == 0:
            self.check_divergence()

    def check_divergence(self) -> None:
        """Stop the run when a training loss since the start was NaN or infinite (one host read)."""
        if self._watch is None:
            return
        bad_step, bad_loss, last_step, last_loss = (
            float(v)
            for v in torch.stack(
                [self._watch[k].float() for k in ("bad_step", "bad_loss", "last_step", "last_loss")]
            ).tolist()
        )
        if bad_step >= 0:
            last = (int(last_step), last_loss) if last_step >= 0 else None
            raise NonFiniteLossError(self._divergence_message(bad_loss, step=int(bad_step), last=last))

    def on_train_epoch_end(self) -> None:
        self.check_divergence()

    def on_validation_epoch_start(self) -> None:
        self._begin_epoch("val")
        # an optimiser step can turn a finite loss into non-finite weights; never validate (and so
        # checkpoint) such a model
        if self.trainer.state.fn != TrainerFn.FITTING:
            return
        self.check_divergence()
        finite = torch.stack([p.detach().isfinite().all() for p in self.net.parameters()]).all()
        if not finite:
            raise NonFiniteLossError(self._divergence_message(float("nan"), what="the weights"))

    def _divergence_message(
        self,
        value: float,
        what: str = "the training loss",
        step: int | None = None,
        last: tuple[int, float] | None = None,
    ) -> str:
        if last is None and self._watch is not None and float(self._watch["last_step"]) >= 0:
            last = (int(self._watch["last_step"]), float(self._watch["last_loss"]))
        step = self.global_step if step is None else step
        told = (
            f"the last finite loss was {last[1]:.4g} at step {last[0]}"
            if last
            else "no step had a finite loss"
        )
        lr = self.hparams.optimizer.get("lr")
        precision = str(getattr(self.trainer, "precision", "32-true")) if self._trainer is not None else "32"
        hints = [
            f"a smaller learning rate (optimizer.lr is {lr:g})",
            "gradient clipping (trainer.gradient_clip_val=1.0)",
        ]
        if "32" not in precision and "64" not in precision:
            hints.append(f"full precision (trainer.precision=32-true; now {precision})")
        return (
            f"{what} became {value} at step {step} (epoch {self._epoch()}); {told}. The run "
            "stopped; no checkpoint of the diverged model was kept as best and nothing was exported. Try "
            + ", ".join(hints[:-1])
            + f" or {hints[-1]}."
        )

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
        steps, warmup = filled.get("total_steps", target.get("total_steps")), target.get("pct_start")
        if steps is not None and warmup is not None and abs(float(warmup) * int(steps) - 1) < 1e-9:
            # OneCycleLR would divide by zero at its first step: a warm-up of exactly one step has no length
            raise ConfigError(
                f"scheduler.scheduler.pct_start={warmup} of {steps} optimiser steps is a warm-up of one "
                "step, which one-cycle cannot schedule; train for more steps (trainer.max_epochs) or change "
                "pct_start"
            )
        scheduler = instantiate(target, _partial_=True)(optimizer, **filled)
        lr_scheduler = {"scheduler": scheduler, "interval": sched_cfg.get("interval", "epoch")}
        if sched_cfg.get("monitor"):
            lr_scheduler["monitor"] = sched_cfg["monitor"]
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    # --- checkpoint contract -----------------------------------------------------------------------------

    def use_data(self, data_contract: dict[str, Any]) -> None:
        """Take the data's account of its images (classes, size, normalisation) into the contract that
        checkpoints, export and predict carry: handed over by whoever built the data, never fetched."""
        self.contract = {**data_contract, "task": self.name, "serving": self.serving}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cnnlab"] = {"contract": {**self.contract, **self.contract_extras()}, "task": self.name}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.contract = checkpoint.get("cnnlab", {}).get("contract", {})
