"""Config helpers: the config tree printout, the option each group chose, model/data/task pairing checks."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from cnnlab import CONF_DIR
from cnnlab.data.samples import TARGET_KEYS


class ConfigError(ValueError):
    """A configuration a run cannot start with; the message says what to change."""


def print_config(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the composed config as a tree (rich), and save that text beside the run when asked."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    rich.print(tree)
    if save_to is not None:
        save_to.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def choices() -> dict[str, str]:
    """The option each config group took in this run (``model: resnet``), empty outside a Hydra app."""
    if not HydraConfig.initialized():
        return {}
    picked = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in picked.items() if not k.startswith("hydra") and v is not None}


@cache
def target_of(group: str, option: str) -> Any:
    """The class an option of a config group instantiates (None for options without a target)."""
    cfg = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    cfg = cfg.get(group, cfg) if "_target_" not in cfg else cfg  # task options sit under `task:`
    return get_class(cfg["_target_"]) if "_target_" in cfg else None


def options(group: str, fits: Callable[[Any], bool]) -> list[str]:
    """The options of a config group (``model``, ``data``) whose target class ``fits``."""
    found = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        target = target_of(group, path.stem)
        if target is not None and fits(target):
            found.append(path.stem)
    return found


def check_pairing(cfg: DictConfig) -> None:
    """Refuse a model or a dataset the task cannot train with, naming the options that fit."""
    from cnnlab.models.base import OUTPUTS

    task_cls, model_cls = get_class(cfg.task._target_), get_class(cfg.model._target_)
    data_cls = get_class(cfg.data._target_)
    picked = choices()
    task = picked.get("task", task_cls.name)
    wanted = task_cls.network_output
    made = getattr(model_cls, "output", None)
    if made != wanted:
        fitting = options("model", lambda c: getattr(c, "output", None) == wanted)
        raise ConfigError(
            f"model={picked.get('model', model_cls.__name__)} returns {OUTPUTS.get(made, 'something else')}, "
            f"but task={task} trains a network that returns {OUTPUTS[wanted]}. "
            f"Models for task={task}: {', '.join(fitting) or 'none'}."
        )
    provides = getattr(data_cls, "provides", None)
    have = set(provides(cfg.data.get("normal_classes"))) if provides else set()
    missing = [key for key in task_cls.samples.needs if key not in have]
    if missing:
        fitting = options(
            "data", lambda c: hasattr(c, "provides") and set(task_cls.samples.needs) <= set(c.provides([0]))
        )
        hint = (
            " Labelled datasets serve it with data.normal_classes=[...] (the classes that count as normal)."
            if "anomaly" in missing and "label" in have
            else ""
        )
        raise ConfigError(
            f"task={task} needs {' and '.join(TARGET_KEYS[k] for k in missing)}, which "
            f"data={picked.get('data', data_cls.__name__)} does not have.{hint} "
            f"Datasets for task={task}: {', '.join(fitting) or 'none'}."
        )


def validate(cfg: DictConfig) -> None:
    """Everything about a run's config that can be checked before any data is read or model built."""
    check_pairing(cfg)
    _metric_mode(cfg.task._target_, str(cfg.optimized_metric))


def _metric_mode(task_target: str, metric: str) -> str:
    try:
        return get_class(task_target).metric_mode(metric)
    except ValueError as err:  # a misspelt optimized_metric, found when the config resolves
        raise ConfigError(str(err)) from None


# `${metric_mode:${task._target_},${optimized_metric}}`: max or min, as the task defines the metric
OmegaConf.register_new_resolver("metric_mode", _metric_mode, replace=True)


# `${lt:${data.image_size},64}`: model configs pick small-image variants from the data's image size
OmegaConf.register_new_resolver("lt", lambda a, b: a < b, replace=True)


def _count_class_folders(root: str) -> int:
    from cnnlab.data.image_folder import count_class_folders  # Lightning, only where a config asks

    return count_class_folders(root)


# `${class_folders:${data.root}}`: a photo folder's number of classes, counted from root/train
OmegaConf.register_new_resolver("class_folders", _count_class_folders, replace=True)
