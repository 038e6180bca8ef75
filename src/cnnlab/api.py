"""The Python API, for notebooks: ``compose`` a config, ``fit`` it, ``list_runs``, ``load`` an export.

    import cnnlab
    cfg = cnnlab.compose("model=lenet", "trainer.max_epochs=5")  # `python train.py model=lenet ...`'s config
    run = cnnlab.fit(cfg)                                         # the same pipeline, in this process
    run.metrics["test/acc"], run.folder
    cnnlab.load(run).predict(["seven.png"])                      # records, as cnnlab-predict gives them
    cnnlab.list_runs()                                            # every run under outputs/, as a table

Every mistake comes out as a ``CnnlabError`` with the paragraph the command line prints after ``cnnlab:``;
a run leaves the same folder as the command line's (``.hydra/``, ``train.log``, ``status.json``, ...).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnlab import CONF_DIR, config, runs
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError

#: what ``load`` takes
LOADS = (
    "a run folder of train.py (outputs/train/runs/<date_time>), a cnnlab.Run, its export/ folder, or a "
    "model.pt2, model.onnx or model.pt"
)
#: a log line, as Hydra's job logging writes it
LINE = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
#: the overrides ``compose`` and ``fit`` take
Overrides = str | Mapping[str, Any] | Sequence[str]


def compose(*overrides: Overrides, config_name: str = "train") -> DictConfig:
    """The config ``python train.py <overrides>`` would run, checked as the command line checks it.

    Overrides are strings (``"model=lenet"``), lists of them or dicts (``{"trainer.max_epochs": 5}``);
    ``resume=<run folder|latest>`` reopens a run as on the command line. The config names a fresh run folder.
    """
    given = _override_list(overrides)
    try:
        given = runs.resume_overrides(given)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    cfg = _compose(config_name, given)
    explicit = any(o.startswith("hydra.run.dir=") for o in given)
    _pin_run_folder(cfg, _unused(Path(str(cfg.hydra.run.dir))) if not explicit else None)
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """Refuse a config the command line would refuse before reading data (the values, the pairing, the
    callbacks' options)."""
    HydraConfig.instance().set_config(cfg)  # choices() and ${hydra:...} read it
    with config.explained("config"):
        config.validate(cfg)
    from cnnlab.train import make_callbacks  # Lightning, once a config is checked

    with config.explained("callbacks"):
        make_callbacks(cfg)


def _override_list(overrides: Sequence[Overrides]) -> list[str]:
    found: list[str] = []
    for item in overrides:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, Mapping):
            found += [f"{key}={_value(value)}" for key, value in item.items()]
        elif isinstance(item, Sequence):
            found += _override_list(item)
        else:
            raise ConfigError(
                f"{item!r} is no override: give strings such as 'model=lenet' or a dict such as "
                "{'trainer.max_epochs': 5}"
            )
    return found


def _value(value: Any) -> str:
    """A Python value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    return runs.quoted(value)


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    """Hydra's composition of ``overrides``; its refusals as a ``ConfigError`` naming the valid choices."""
    GlobalHydra.instance().clear()  # a Hydra app or an earlier composition that did not close its own
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        try:
            return hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
        except HydraException as err:
            raise ConfigError(_explain(err, config_name, overrides)) from None


def _explain(err: HydraException, config_name: str, overrides: list[str]) -> str:
    """Hydra's message in one paragraph, with the keys a misspelt one could have meant."""
    lines = str(err).split("\nConfig search path:")[0].splitlines()
    head = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("\t")]
    listed = [ln.strip() for ln in lines if ln.startswith("\t")]  # Hydra's list of a group's options
    text = " ".join(ln if ln.endswith((":", ".")) else f"{ln}." for ln in head).rstrip(".")
    text += " " + ", ".join(listed) if listed else ""
    wrong = re.search(r"Could not find '([\w/]+)/(\w+)'", text)
    if wrong and listed:
        close = difflib.get_close_matches(wrong.group(2), listed, n=1)
        return text + (f". Did you mean {wrong.group(1)}={close[0]}?" if close else ".")
    if "--multirun" in text:
        return text + (
            ". cnnlab.fit runs one config: sweep from the command line (python train.py -m ...), or call "
            "fit once per value"
        )
    missing = re.search(r"Could not override '([\w.]+)'", text)
    if missing:
        return text + _keys_near(missing.group(1), config_name, overrides)
    return text


def _keys_near(key: str, config_name: str, others: list[str]) -> str:
    """`` trainer takes: ...; did you mean max_epochs?`` for a key the config does not have."""
    parent, _, name = key.rpartition(".")
    kept = [o for o in others if not o.lstrip("+~").startswith(f"{key}=")]
    try:
        cfg = hydra_compose(config_name, overrides=kept)
    except HydraException:
        return "."
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return "."
    keys = sorted(str(k) for k in node.keys())
    close = difflib.get_close_matches(name, keys, n=1)
    hint = f" Did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    return f". {parent or 'The config'} takes: {', '.join(keys)}.{hint}"


def _unused(folder: Path) -> Path:
    """``folder``, or ``folder_1``, ``folder_2``, ... where a run already wrote there (two in a second)."""
    candidate, number = folder, 0
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = folder.with_name(f"{folder.name}_{number}")
    return candidate


def _pin_run_folder(cfg: DictConfig, folder: Path | None) -> None:
    """Write the run folder into the config as ``train.py`` settles it (``paths.output_dir`` reads it)."""
    folder = folder if folder is not None else Path(str(cfg.hydra.run.dir))
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.run.dir = str(folder)
        cfg.hydra.runtime.output_dir = os.path.abspath(folder)
        cfg.hydra.mode = RunMode.RUN


def fit(cfg_or_overrides: DictConfig | Overrides = (), /) -> Run:
    """Train, test and export as ``python train.py`` does, in this process; the run it leaves.

    Takes a config from ``compose`` or overrides for it. A config that already ran trains again in a new
    folder (unless it resumes a run).
    """
    if isinstance(cfg_or_overrides, DictConfig):
        if "hydra" not in cfg_or_overrides:
            raise ConfigError(
                "fit takes a config made by cnnlab.compose(...) (it has a hydra node), or overrides"
            )
        cfg = copy.deepcopy(cfg_or_overrides)  # a run writes what it settles into its config, not yours
        OmegaConf.clear_cache(cfg)  # the folder resolvers (classes, image size) measure the files anew
        folder = Path(str(cfg.hydra.run.dir))
        resumed = cfg.get("ckpt_path") is not None
        _pin_run_folder(cfg, folder if resumed or not (folder / "status.json").is_file() else _unused(folder))
        check(cfg)
    else:
        cfg = compose(cfg_or_overrides)
    from hydra._internal.callbacks import Callbacks  # the callbacks a Hydra app runs: status.json's writer
    from hydra.core.utils import JobStatus, run_job
    from hydra.types import HydraContext

    from cnnlab.train import run_task

    folder = Path(str(cfg.hydra.run.dir))
    console()
    with _run_log(folder), _sigint_kept():
        job = run_job(
            task_function=run_task,  # what train.py's Hydra task runs
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
            hydra_context=HydraContext(config_loader=None, callbacks=Callbacks(cfg)),
            configure_logging=False,  # the console handler above; Hydra's would replace the notebook's
        )
    if job.status == JobStatus.FAILED:
        error = job._return_value
        if isinstance(error, CnnlabError):
            raise error.with_traceback(None) from None  # its paragraph, as the command line shows it
        raise error
    return Run(folder)


@contextlib.contextmanager
def _run_log(folder: Path) -> Iterator[None]:
    """The run's ``train.log`` for the time of the run, as Hydra's job logging writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "train.log")
    handler.setFormatter(logging.Formatter(LINE))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _sigint_kept() -> Iterator[None]:
    # Lightning ignores Ctrl-C once it has handled one; a notebook's interrupt button must work after it
    main = threading.current_thread() is threading.main_thread()
    kept = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and kept is not None:
            signal.signal(signal.SIGINT, kept)


class _Console(logging.StreamHandler):
    """Writes to the ``sys.stdout`` of the moment a line is logged: a notebook's cell, a test's capture."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def console() -> None:
    """cnnlab's log lines (the run's options, a line per epoch, the metrics) on the console, set up once."""
    logger = logging.getLogger("cnnlab")
    printed = [*logger.handlers, *logging.getLogger().handlers]  # logging.basicConfig() prints them already
    if not any(_prints(h) for h in printed):
        handler = _Console()
        handler.setFormatter(logging.Formatter(LINE, "%H:%M:%S"))
        logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def _prints(handler: logging.Handler) -> bool:
    """Whether a handler writes to the console (pytest's capture does not count: it only records)."""
    if isinstance(handler, _Console):
        return True
    plain = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    return plain and not type(handler).__module__.startswith("_pytest")


@dataclass(frozen=True)
class Run:
    """A run folder of ``train.py`` (or ``fit``) and what it holds."""

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    @property
    def metrics(self) -> dict[str, Any]:
        """Its ``metrics.json``: final val/ and test/ metrics, best/<metric>, checkpoint and export paths."""
        return runs.read_json(self.folder / "metrics.json")

    @property
    def status(self) -> str:
        """running, completed, failed or interrupted (``status.json``); unknown without one."""
        return str(runs.read_json(self.folder / "status.json").get("status", "unknown"))

    @property
    def error(self) -> str | None:
        """Why the run failed or stopped, as its ``status.json`` says."""
        found = runs.read_json(self.folder / "status.json")
        return found.get("error") or found.get("reason")

    @property
    def best_checkpoint(self) -> Path | None:
        """The checkpoint that was tested and exported."""
        named = self.metrics.get("best_checkpoint")
        return Path(named) if named else None

    @property
    def export(self) -> Path | None:
        """The export folder (model.pt2, model.onnx, model.pt, model.json), when the run exported."""
        named = self.metrics.get("export")
        return Path(named) if named else None

    def load(self) -> Predictor:
        """Its exported model, ready to predict."""
        return load(self)

    def __repr__(self) -> str:
        metrics = self.metrics
        metric = metrics.get("optimized_metric")
        value = metrics.get(f"best/{metric}", metrics.get(metric)) if metric else None
        shown = f", {metric}={value:.4g}" if isinstance(value, (int, float)) else ""
        return f"Run({str(self.folder)!r}, status={self.status}{shown})"


class Predictor:
    """An exported model: ``predict(images)`` gives one plain record per image; ``contract`` what it takes."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.contract: dict[str, Any] = model.contract
        self.task = str(model.contract.get("task"))
        self.class_names: list[str] = model.class_names

    def predict(self, images: Any, **options: Any) -> list[dict[str, Any]]:
        """Records (JSON-ready) for image files or tensors (C, H, W), a batch (N, C, H, W) or a list of them;
        options as cnnlab-predict's (``top_k=3``, ``threshold=0.5``)."""
        from cnnlab.serving import runtime

        try:
            return runtime.predict(self.model, self._tensors(images), **options)
        except CnnlabError:
            raise
        except ValueError as err:  # an option out of range, an image of other channels
            raise ConfigError(str(err)) from None

    def _tensors(self, images: Any) -> list[Any]:
        import torch
        from torchvision.transforms.v2 import functional as TF

        from cnnlab.data.io import read_image

        if isinstance(images, (str, Path, torch.Tensor)) or hasattr(images, "getpixel"):
            images = [images]
        found = []
        for image in images:
            if isinstance(image, (str, Path)):
                found.append(read_image(image, self.model.in_channels))
            elif hasattr(image, "getpixel"):  # a PIL image
                found.append(TF.pil_to_tensor(image))
            elif isinstance(image, torch.Tensor) and image.dim() == 4:
                found += list(image)
            elif isinstance(image, torch.Tensor):
                found.append(image)
            else:
                raise ConfigError(
                    f"predict takes image files, PIL images or tensors (C, H, W) or (N, C, H, W); got "
                    f"{type(image).__name__}"
                )
        return found

    def __repr__(self) -> str:
        return f"Predictor({self.model.path}, task={self.task}, classes={len(self.class_names)})"


def load(source: Run | str | Path) -> Predictor:
    """The exported model of a run folder (or an export folder, or a model file), ready to predict."""
    from cnnlab.serving import runtime

    path = source.folder if isinstance(source, Run) else Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; load takes {LOADS}")
    if path.is_dir() and (path / "metrics.json").is_file():
        path = _export_of(Run(path))
    return Predictor(runtime.load(path))


def _export_of(run: Run) -> Path:
    """The export folder a run wrote, or why it has none."""
    for candidate in (run.export, run.folder / "export"):
        if candidate is not None and (candidate / "model.json").is_file():
            return candidate
    why = run.metrics.get("export_error") or "it ran with export=null"
    ckpt = run.best_checkpoint or run.folder / "checkpoints" / "best.ckpt"
    raise CheckpointError(
        f"run {run.folder} has no exported model ({why}). Export its checkpoint with "
        f"`python -m cnnlab.export {ckpt}` and load the export/ folder it writes"
    )


def list_runs(root: str | Path = "outputs") -> Any:
    """Every run under ``root``, oldest first: a pandas DataFrame when pandas is installed, else dicts."""
    rows = [run_row(folder) for folder in runs.run_folders(Path(root))]
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows, columns=_columns(rows))


def run_row(folder: Path) -> dict[str, Any]:
    """One run in a line: folder, task, model, data, status, the optimised metric and its value, the test
    metrics, the date."""
    from cnnlab.train import optimized_value

    run = Run(folder)
    metrics, choices = run.metrics, runs.choices(folder)
    metric = metrics.get("optimized_metric")
    try:
        value = optimized_value(metrics, str(metric)) if metric else None
    except ConfigError:
        value = None
    tests = {k: v for k, v in sorted(metrics.items()) if k.startswith("test/") and k.count("/") == 1}
    return {
        "folder": str(folder),
        **{group: choices.get(group) for group in ("task", "model", "data", "experiment")},
        "status": run.status,
        "metric": metric,
        "value": value,
        **{k: v for k, v in tests.items() if isinstance(v, (int, float))},
        "date": runs.started(folder),
    }


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    fixed = ["folder", "task", "model", "data", "experiment", "status", "metric", "value"]
    tests = sorted({k for row in rows for k in row if k.startswith("test/")})
    return [*fixed, *tests, "date"]
