"""Config helpers: the config tree printout, the option each group chose, model/data/task pairing checks."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnnlab import CONF_DIR
from cnnlab.errors import CnnlabError, ConfigError

log = logging.getLogger(__name__)


def config_tree(cfg: DictConfig) -> str:
    """The composed config as a rich tree, rendered to plain text."""
    import rich.console
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    console = rich.console.Console(file=io.StringIO(), width=110, no_color=True)
    console.print(tree)
    return console.file.getvalue()


def file_log() -> logging.Logger:
    """A logger that writes to the run's log file (train.log) only, not to the console."""
    logger = logging.getLogger("cnnlab.run_log")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return logger


def log_config(cfg: DictConfig) -> None:
    """The config tree into train.log (on the console too with ``print_config=true``), a summary line."""
    tree = config_tree(cfg)
    file_log().info("composed config:\n%s", tree)
    if cfg.get("print_config"):
        print(tree)
    chosen = choices()
    picked = " ".join(f"{k}={chosen[k]}" for k in SUMMARY_GROUPS if k in chosen)
    log = logging.getLogger("cnnlab")
    log.info("%s -> %s (the config: .hydra/config.yaml)", picked or "run", cfg.paths.get("output_dir", "?"))


#: the groups the console summary of a run names
SUMMARY_GROUPS = ("task", "data", "model", "optimizer", "scheduler", "augmentation", "finetune", "experiment")


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
    check_data_serves(task_cls, cfg.data, task, picked.get("data", data_cls.__name__))
    check_anomalies_left(cfg, task_cls)


def check_data_serves(task_cls: type, data: DictConfig, task: str, data_name: str) -> None:
    """Refuse a dataset without what the task needs (labels, masks, boxes), naming the datasets that fit."""
    provides = getattr(get_class(data._target_), "provides", None)
    have = set(provides(data.get("normal_classes"))) if provides else set()
    missing = [key for key in task_cls.samples.needs if key not in have]
    if missing:
        from cnnlab.samples import TARGET_KEYS  # torch: only for this message

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
            f"data={data_name} does not have.{hint} "
            f"Datasets for task={task}: {', '.join(fitting) or 'none'}."
        )


def check_anomalies_left(cfg: DictConfig, task_cls: type) -> None:
    """Refuse labelled data whose every class is called normal: nothing would be left to detect or test on."""
    normal, count = cfg.data.get("normal_classes"), cfg.data.get("num_classes")
    if "anomaly" not in task_cls.samples.needs or normal is None or not isinstance(count, int):
        return
    if set(range(count)) <= {int(c) for c in normal}:
        raise ConfigError(
            f"data.normal_classes={list(normal)} names every one of the {count} classes normal: the test "
            "split would hold no anomalies, so no AUROC could be measured and no threshold tested. Name the "
            "normal classes only, e.g. data.normal_classes=[0]; the others are the anomalies."
        )


@dataclass(frozen=True)
class Rule:
    """What a config key must hold: a kind of number, a range, and how to say it to a user."""

    key: str
    kind: type
    ok: Callable[[Any], bool]
    expect: str
    optional: bool = False
    #: words the key takes besides numbers (``auto``)
    words: tuple[str, ...] = ()

    def problem(self, cfg: DictConfig) -> str | None:
        """None when ``cfg`` holds a valid value at ``key`` (or no such key), else what is wrong."""
        value = OmegaConf.select(cfg, self.key, default=_ABSENT, throw_on_missing=False)
        if (
            value is _ABSENT
            or (value is None and self.optional)
            or (isinstance(value, str) and value in self.words)
        ):
            return None
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = numeric and (self.kind is float or isinstance(value, int))
        if not fits or not self.ok(value):
            return f"{self.key}={value}: give {self.expect}"
        return None


_ABSENT = object()
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", 64, 32, 16)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")

#: the keys of the main groups and what they take; checked before any data is read
RULES = (
    Rule("seed", int, lambda v: v >= 0, "a whole number >= 0, e.g. seed=42"),
    Rule("trainer.max_epochs", int, lambda v: v >= 1 or v == -1, "a whole number of epochs >= 1, e.g. 20"),
    Rule("trainer.max_steps", int, lambda v: v >= 1 or v == -1, "a number of steps >= 1, or -1 for no limit"),
    Rule("trainer.log_every_n_steps", int, lambda v: v >= 1, "a number of steps >= 1"),
    Rule("trainer.gradient_clip_val", float, lambda v: v > 0, "a gradient norm > 0, or null", optional=True),
    Rule("data.batch_size", int, lambda v: v >= 1, "a whole number of images per batch >= 1, e.g. 32"),
    Rule(
        "data.num_workers",
        int,
        lambda v: v >= 0,
        "a number of loader processes >= 0 (0: none), or auto (the cores this process may use, minus one)",
        words=("auto",),
    ),
    Rule("data.image_size", int, lambda v: v >= 1, "a size in pixels >= 1, e.g. 224", optional=True),
    Rule("data.resize_size", int, lambda v: v >= 1, "a size in pixels >= 1, or null", optional=True),
    Rule("data.val_fraction", float, lambda v: 0 < v < 1, "a fraction strictly between 0 and 1, e.g. 0.1"),
    Rule("optimizer.lr", float, lambda v: v > 0, "a learning rate > 0, e.g. 1e-3"),
    Rule("optimizer.weight_decay", float, lambda v: v >= 0, "a weight decay >= 0", optional=True),
)
for _split in ("train", "val", "test"):
    RULES += (
        Rule(
            f"trainer.limit_{_split}_batches",
            float,
            lambda v: v >= 0,
            "a fraction or a number of batches >= 0, or null for all",
            optional=True,
        ),
    )


def check_values(cfg: DictConfig) -> None:
    """Refuse values of the wrong kind or out of range, naming every key at fault and what it takes."""
    check_root(cfg)
    problems = [problem for rule in RULES if (problem := rule.problem(cfg))]
    trainer = cfg.get("trainer") or {}
    if "precision" in trainer and trainer.precision not in PRECISIONS:
        problems.append(
            f"trainer.precision={trainer.precision}: give one of {', '.join(map(str, PRECISIONS[:8]))}"
        )
    if "accelerator" in trainer and trainer.accelerator not in ACCELERATORS:
        problems.append(f"trainer.accelerator={trainer.accelerator}: give one of {', '.join(ACCELERATORS)}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def check_root(cfg: DictConfig) -> None:
    """A dataset's folder must be given before anything reads it or resolves a value from it."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or "root" not in data.keys():  # `in` is False for ??? (missing)
        return
    if OmegaConf.is_missing(data, "root") or data.root is None or not str(data.root).strip():
        shown = (
            " is not set"
            if OmegaConf.is_missing(data, "root")
            else f"={'null' if data.root is None else repr(data.root)}"
        )
        name = choices().get("data")
        raise ConfigError(
            f"data.root{shown}: {f'data={name}' if name else 'the dataset'} reads its files from there. "
            f"Give the folder, e.g. data.root=/path/to/{name or 'data'}"
        )


@contextlib.contextmanager
def explained(what: str) -> Iterator[None]:
    """Errors a constructor raises about its arguments become ``ConfigError``s that name the config group.

    Hydra wraps them (InstantiationException) and OmegaConf too (a resolver's error); cnnlab's own errors come
    out as they were raised, anything else as a ``ConfigError`` prefixed with ``what`` (``model``, ``data``).
    """
    try:
        yield
    except (InstantiationException, OmegaConfBaseException) as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, CnnlabError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{what}: {cause}") from cause
        raise
    except CnnlabError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{what}: {err}") from err


def validate(cfg: DictConfig) -> None:
    """Everything about a run's config that can be checked before any data is read or model built."""
    check_values(cfg)
    check_pairing(cfg)

    _metric_mode(cfg.task._target_, str(cfg.optimized_metric))
    check_export(cfg.get("export"))


def warn_idle_options(cfg: DictConfig) -> None:
    """Say which task options the command line set that do nothing in the chosen setting."""
    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    for line in idle_options(cfg, given):
        log.warning("%s", line)


def idle_options(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """What each task option set on the command line does nothing in the chosen setting, said in a line."""
    active_when = getattr(get_class(cfg.task._target_), "active_when", {})
    lines = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        option = key.removeprefix("task.")
        if key == option or option not in active_when:
            continue
        setting, values = active_when[option]
        if cfg.task.get(setting) not in values:
            lines.append(
                f"task.{option} does nothing with task.{setting}={cfg.task.get(setting)}: it acts with "
                f"task.{setting}={' or '.join(values)} only"
            )
    return lines


def check_export(export: Any) -> None:
    """``export``: null, or ``formats`` naming one or more of the export formats."""
    from cnnlab.export import check_formats

    if export is None:
        return
    unknown = sorted(set(export) - {"formats"})
    if unknown:
        raise ConfigError(
            f"export.{unknown[0]} is not an export option; export takes formats (or export=null)"
        )
    chosen = export.get("formats")
    check_formats([chosen] if isinstance(chosen, str) else list(chosen or []))


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


# `${class_folders:${data.root}}`: a photo folder's number of classes, counted from root/train. The folder
# resolvers are cached in the config they resolve in: each access would count, or scan and log, again
OmegaConf.register_new_resolver("class_folders", _count_class_folders, replace=True, use_cache=True)


def _folder_image_size(root: str) -> int:
    from cnnlab.data.image_folder import folder_image_size

    return folder_image_size(root)


# `${folder_image_size:${data.root}}`: a photo folder's own image size (median shorter side, at most 224)
OmegaConf.register_new_resolver("folder_image_size", _folder_image_size, replace=True, use_cache=True)


def _job_gpus() -> int:
    import torch  # where a launcher config asks: a sweep's main process, never a job

    return 1 if torch.cuda.is_available() else 0


def _job_cpus(num_workers: int | str) -> int:
    # on a GPU machine the cores are shared out among the GPUs' jobs; without GPUs, a job takes its main
    # process and its loader workers
    import os

    import torch

    cores = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    workers = cores - 1 if str(num_workers) == "auto" else int(num_workers or 0)
    return max(1, cores // gpus) if gpus else min(cores, 1 + workers)


def _gpu_precision() -> str:
    import torch

    # bfloat16 keeps float32's range (no loss scaling, no overflow) where the GPU computes in it (Ampere on)
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


# `${gpu_precision:}`: trainer=gpu's mixed precision, bf16 where the GPU supports it
OmegaConf.register_new_resolver("gpu_precision", _gpu_precision, replace=True)


# `${job_gpus:}`, `${job_cpus:${data.num_workers}}`: what each job of a parallel sweep asks its launcher for
OmegaConf.register_new_resolver("job_gpus", _job_gpus, replace=True)
OmegaConf.register_new_resolver("job_cpus", _job_cpus, replace=True)


def ddp_in_sweep(strategies: list[str], launcher: str) -> str | None:
    """Why a sweep whose jobs would use one of ``strategies`` cannot run, or None.

    Under Slurm (``hydra/launcher=slurm``) Slurm starts every rank itself and Lightning reads its environment,
    so a job of a sweep may use DDP across GPUs and nodes there.
    """
    ddp = [s for s in strategies if "ddp" in s and s != "ddp_notebook"]
    if not ddp or launcher.endswith("SlurmLauncher"):
        return None
    return (
        f"trainer.strategy={ddp[0]} inside a multirun (-m): DDP re-launches train.py and cannot run inside "
        "a sweep. Sweep with one device per job (trainer=default or trainer=gpu; hydra/launcher=ray runs one "
        "job per GPU side by side), run a single job with trainer=ddp to use every GPU, or launch through "
        "Slurm (hydra/launcher=slurm), which starts each rank itself."
    )


def sweep_strategies(cfg: DictConfig) -> list[str]:
    """Every trainer strategy the jobs of a sweep would use: the composed one and those of swept options."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found = [str(cfg.trainer.get("strategy", "auto"))]
    for override in OverridesParser.create().parse_overrides(list(cfg.hydra.overrides.task)):
        key = override.get_key_element()
        values = [str(v) for v in override.sweep_string_iterator()] if override.is_sweep_override() else []
        if key == "trainer":
            for option in values:
                path = CONF_DIR / "trainer" / f"{option}.yaml"
                found.append(str(OmegaConf.load(path).get("strategy", "auto")) if path.is_file() else "auto")
        elif key == "trainer.strategy":
            found += values
    return found


def sweep_problem(cfg: DictConfig) -> str | None:
    """What no job of a multirun could survive, found before the first one starts, or None.

    DDP inside the sweep, a search's spaces, sampler and pruner, and what each Ray job asks for against what
    the Ray cluster has (a request no node can meet waits for ever).
    """
    launcher = cfg.hydra.launcher
    target = str(launcher.get("_target_", ""))
    problem = ddp_in_sweep(sweep_strategies(cfg), target)
    if problem is None and str(cfg.hydra.sweeper.get("_target_", "")).endswith("OptunaSearch"):
        from cnnlab.search import search_problem

        problem = search_problem(OmegaConf.to_container(cfg.hydra.sweeper, resolve=True))
    if problem is None and target.endswith("RayLauncher"):
        ray_cfg = OmegaConf.to_container(launcher.ray, resolve=True)
        problem = ray_problem(dict(ray_cfg.get("init") or {}), dict(ray_cfg.get("remote") or {}))
    return problem


def ray_problem(init: dict[str, Any], remote: dict[str, Any]) -> str | None:
    """A misspelt Ray option, or a job's request (CPUs, GPUs, resources) larger than any node holds."""
    import inspect

    import ray

    try:
        if remote:  # Ray's own check of the option names and values; nothing runs
            ray.remote(**remote)(_no_op)
    except (ValueError, TypeError) as err:
        return f"hydra.launcher.ray.remote: {err}"
    known = set(inspect.signature(ray.init).parameters) - {"kwargs"}
    unknown = sorted(k for k in init if k not in known and not k.startswith("_"))
    if unknown:
        return (
            f"hydra.launcher.ray.init.{unknown[0]} is not an option of ray.init; it takes "
            f"{', '.join(sorted(known))}"
        )
    have = cluster_resources(init)
    asked = {
        "CPU": remote.get("num_cpus", 1),
        "GPU": remote.get("num_gpus", 0),
        **(remote.get("resources") or {}),
    }
    names = {"CPU": "num_cpus", "GPU": "num_gpus"}
    for resource, amount in asked.items():
        if amount and amount > have.get(resource, 0):
            key = names.get(resource, f"resources.{resource}")
            most = f"{have.get(resource, 0):g}"
            where = (
                f"this machine has {most}"
                if init.get("address") is None
                else f"no node of the Ray cluster at {init['address']} has more than {most}"
            )
            return (
                f"hydra.launcher.ray.remote.{key}={amount}: each job asks for {amount} {resource}, but "
                f"{where}, so no job would ever start. Ask for at most {most} (without GPUs: "
                "hydra.launcher.ray.remote.num_gpus=0), or run the sweep where the resources are."
            )
    return None


def cluster_resources(init: dict[str, Any]) -> dict[str, float]:
    """The most of each resource (CPU, GPU, custom) that one node has: this machine, or a running cluster's.

    A job runs on one node, so the largest node, not the cluster's total, bounds what a job may ask.
    """
    if init.get("address") is None:  # Ray would start here, with these (or what it finds)
        import os

        import torch

        return {
            "CPU": init.get("num_cpus") or os.cpu_count() or 1,
            "GPU": init["num_gpus"] if init.get("num_gpus") is not None else torch.cuda.device_count(),
            **(init.get("resources") or {}),
        }
    import ray

    if not ray.is_initialized():  # the launcher finds it connected and uses this connection
        ray.init(**init)
    largest: dict[str, float] = {}
    for node in ray.nodes():
        for resource, amount in node["Resources"].items() if node.get("Alive") else ():
            largest[resource] = max(largest.get(resource, 0), amount)
    return largest


def _no_op() -> None:
    """A function for Ray to check remote options on."""
