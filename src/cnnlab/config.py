"""Config helpers: the config tree printout, the option each group chose, and model/data pairing checks."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from cnnlab import CONF_DIR


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
def _target_of(group: str, option: str) -> Any:
    cfg = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    return get_class(cfg["_target_"]) if "_target_" in cfg else None


def options_for_task(group: str, task: str) -> list[str]:
    """Options of a config group (``model``, ``data``) whose target serves ``task``."""
    found = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        target = _target_of(group, path.stem)
        if target is not None and getattr(target, "task", None) == task:
            found.append(path.stem)
    return found


def check_pairing(cfg: DictConfig) -> None:
    """Refuse a model and a dataset that serve different tasks, naming the valid pairs."""
    model_cls, data_cls = get_class(cfg.model._target_), get_class(cfg.data._target_)
    task_cls = get_class(cfg.task._target_)
    kinds = {
        "model": getattr(model_cls, "task", None),
        "data": getattr(data_cls, "task", None),
        "task": getattr(task_cls, "kind", None),
    }
    if len({k for k in kinds.values() if k}) > 1:
        picked = choices()
        data_task = kinds["data"] or ""
        raise ConfigError(
            f"model={picked.get('model', model_cls.__name__)} serves {kinds['model']!r}, "
            f"data={picked.get('data', data_cls.__name__)} is a {data_task!r} dataset and "
            f"task={picked.get('task', task_cls.__name__)} trains {kinds['task']!r}. "
            f"Models for {data_task} data: {', '.join(options_for_task('model', data_task)) or 'none'}."
        )


# `${lt:${data.image_size},64}`: model configs pick small-image variants from the data's image size
OmegaConf.register_new_resolver("lt", lambda a, b: a < b, replace=True)


def _count_class_folders(root: str) -> int:
    from cnnlab.data.image_folder import count_class_folders  # Lightning, only where a config asks

    return count_class_folders(root)


# `${class_folders:${data.root}}`: a photo folder's number of classes, counted from root/train
OmegaConf.register_new_resolver("class_folders", _count_class_folders, replace=True)
