"""Transfer learning over the ``stages`` contract: parameter groups, freeze depth, gradual unfreezing.

Every stage owns one optimiser parameter group from the first step, and the head another; the list of
groups never changes, so a run resumes from any checkpoint and runs under DDP.

``freeze=k`` freezes the first k stages (``all``: every stage, a linear probe; 0: none). A frozen stage
stays in eval mode (batch-norm statistics and dropout fixed) after every ``model.train()`` call.
Stages frozen for the whole run get ``requires_grad=False``, so no gradient is computed for them. Stages
that ``unfreeze_every`` will release later keep ``requires_grad=True`` and have their gradients dropped
while frozen: DDP only synchronises parameters that required gradients when it wrapped the model, and a
parameter without a gradient is skipped by every torch optimiser (no step, no weight decay).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

log = logging.getLogger(__name__)


def stages_of(net: nn.Module) -> list[nn.Module]:
    """The network's ordered backbone stages (empty for a network without the contract)."""
    return list(getattr(net, "stages", []))


def parse_freeze(value: Any, num_stages: int, key: str = "finetune.freeze") -> int:
    """The number of stages ``value`` freezes: an integer from 0 to the number of stages, or ``all``."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return num_stages
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if not 0 <= count <= num_stages or isinstance(value, bool):
        raise ValueError(f"{key}={value!r}: give a number of stages from 0 to {num_stages}, or 'all'")
    return count


def parameter_groups(net: nn.Module, lr: float, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One optimiser group per stage and one for the head, with discriminative learning rates.

    ``backbone_lr_mult`` scales every stage's rate; ``layer_decay`` further scales stage i of n by
    ``layer_decay ** (n - i)``, so the stem learns slowest.
    """
    stages = stages_of(net)
    if not stages:
        return [{"params": list(net.parameters()), "lr": lr, "name": "all"}]
    mult = float(cfg.get("backbone_lr_mult", 1.0))
    decay = float(cfg.get("layer_decay", 1.0))
    groups = []
    for i, stage in enumerate(stages):
        scale = mult * decay ** (len(stages) - i)
        groups.append({"params": list(stage.parameters()), "lr": lr * scale, "name": f"stage{i}"})
    # by identity, not by name: a network may reach its stages under other names (a detector's backbone)
    in_stages = {id(p) for stage in stages for p in stage.parameters()}
    rest = [p for p in net.parameters() if id(p) not in in_stages]
    groups.append({"params": rest, "lr": lr, "name": "head"})
    return groups


class StageFreezer:
    """Which stages are frozen at each epoch, and the means to keep them so."""

    def __init__(self, net: nn.Module, cfg: Mapping[str, Any]) -> None:
        self.stages = stages_of(net)
        n = len(self.stages)
        freeze = cfg.get("freeze", 0)
        if n == 0 and freeze not in (0, "0", None):
            raise ValueError(f"finetune.freeze={freeze!r}: {type(net).__name__} has no stages to freeze")
        self.start = parse_freeze(freeze or 0, n)
        self.every = int(cfg.get("unfreeze_every", 0) or 0)
        if self.every < 0:
            raise ValueError(f"finetune.unfreeze_every={self.every}: give a number of epochs >= 0")
        self.floor = (
            parse_freeze(cfg.get("unfreeze_to", 0) or 0, n, "finetune.unfreeze_to")
            if self.every
            else self.start
        )
        if self.floor > self.start:
            raise ValueError(f"finetune.unfreeze_to={self.floor} is deeper than finetune.freeze={self.start}")
        for stage in self.stages[: self.floor]:
            stage.requires_grad_(False)

    def frozen_at(self, epoch: int) -> int:
        """How many leading stages are frozen during ``epoch`` (gradual: one fewer every ``every`` epochs)."""
        if not self.every:
            return self.start
        return max(self.floor, self.start - epoch // self.every)

    def hold(self, epoch: int) -> None:
        """Put the stages frozen at ``epoch`` in eval mode (call after every ``model.train()``)."""
        for stage in self.stages[: self.frozen_at(epoch)]:
            stage.eval()

    def drop_gradients(self, epoch: int) -> None:
        """Discard gradients of stages that are frozen now but will be released later."""
        for stage in self.stages[self.floor : self.frozen_at(epoch)]:
            for p in stage.parameters():
                p.grad = None

    def describe(self, epoch: int) -> str:
        """A one-line account for the log: how many stages are frozen now, and the plan."""
        k = self.frozen_at(epoch)
        plan = f", one fewer every {self.every} epochs down to {self.floor}" if self.every else ""
        return f"{k} of {len(self.stages)} stages frozen at epoch {epoch}{plan}"
