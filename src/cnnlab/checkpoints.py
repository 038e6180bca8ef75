"""Reading cnnlab checkpoints: the run's config, and the task rebuilt with its network."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate

from cnnlab.checkpoint_io import load_plain
from cnnlab.errors import CheckpointError
from cnnlab.tasks.base import BaseTask


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True`` (plain values and tensors only)."""
    ckpt = load_plain(path)
    if not isinstance(ckpt, dict) or "run_config" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(
            f"{path} is not a checkpoint of a cnnlab run (it has no hyper_parameters.run_config): give "
            "<run folder>/checkpoints/best.ckpt or last.ckpt"
        )
    return ckpt


def run_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of the run that wrote ``ckpt``."""
    return copy.deepcopy(ckpt["hyper_parameters"]["run_config"])


def load_task(path: str | Path) -> BaseTask:
    """The task of a checkpoint, its network rebuilt from the run's config and its weights loaded."""
    cfg = run_config(read_checkpoint(path))
    model_cfg = dict(cfg["model"])
    if "weights" in model_cfg:
        model_cfg["weights"] = None  # the checkpoint holds the trained weights; fetch nothing
    net = instantiate(model_cfg)
    task_cls = get_class(cfg["task"]["_target_"])
    return task_cls.load_from_checkpoint(path, net=net, map_location="cpu", weights_only=True)
