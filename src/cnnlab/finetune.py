"""Transfer learning over the ``stages`` contract: parameter groups, freeze depth, frozen batch norm.

Every stage owns one optimiser parameter group from the first step, and the head another. Freezing and
unfreezing change ``requires_grad``, batch-norm mode and a group's learning rate, never the list of groups,
so a run resumes from any checkpoint and runs under DDP.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def stages_of(net: nn.Module) -> list[nn.Module]:
    """The network's ordered backbone stages (empty for a network without the contract)."""
    return list(getattr(net, "stages", []))


def parameter_groups(net: nn.Module, lr: float, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One optimiser group per stage and one for the head, with discriminative learning rates.

    ``backbone_lr_mult`` scales every stage's rate; ``layer_decay`` further scales stage i of n by
    ``layer_decay ** (n - i)``, so the stem learns slowest.
    """
    stages = stages_of(net)
    if not stages:
        return [{"params": list(net.parameters()), "lr": lr, "name": "all", "lr_scale": 1.0}]
    mult = float(cfg.get("backbone_lr_mult", 1.0))
    decay = float(cfg.get("layer_decay", 1.0))
    groups = []
    for i, stage in enumerate(stages):
        scale = mult * decay ** (len(stages) - i)
        groups.append({"params": list(stage.parameters()), "lr": lr * scale, "name": f"stage{i}", "lr_scale": scale})
    rest = [p for name, p in net.named_parameters() if not name.startswith("stages.")]
    groups.append({"params": rest, "lr": lr, "name": "head", "lr_scale": 1.0})
    return groups
