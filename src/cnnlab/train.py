"""Train, test and export one model from a Hydra config: ``python train.py model=resnet data=landmarks``.

One path for every task: seed -> datamodule -> network -> task -> callbacks, loggers -> fit -> test on the
best checkpoint -> metrics.json -> export -> the metric that sweeps optimise.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab import CONF_DIR, config, runs
from cnnlab.errors import CnnlabError, RunInterrupted, unwrap_worker_error

if TYPE_CHECKING:
    import lightning.pytorch as L

    from cnnlab.tasks.base import BaseTask

# torch and Lightning are imported by the functions that train, not here: `python train.py --help` and a
# misspelt option are answered before them, in a second rather than five

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, BaseTask]:
    """The datamodule and the task (with its network) that ``cfg`` describes.

    Normalisation is settled here, before the datamodule is built: the pretrained weights' statistics
    (``normalization=auto``) or the training split's, computed once; either is written into ``cfg.data``, so
    the saved config, the checkpoint and the HPARAMS row all show what the run used.
    """
    with config.explained("config"):
        config.validate(cfg)
    task_cls = get_class(cfg.task._target_)
    with config.explained("model"):
        net = instantiate(cfg.model)
    adopt_weights_normalization(cfg, net)
    with config.explained("task"):
        make_task(cfg, net)  # its options are checked before any data is read; built again once it is
    with config.explained("data"):
        # partial, then a call with the objects: Hydra would turn them into configs
        datamodule = instantiate(cfg.data, _partial_=True)(
            augmentation=instantiate(cfg.augmentation), spec=task_cls.samples
        )
        # the data is read (and every file checked) now, before a network trains: a bad file or a missing
        # dataset stops the run at once, and computed statistics reach the config
        datamodule.prepare_data()
        datamodule.setup("fit")
        if task_cls.samples.normalize and cfg.data.get("mean") is None:
            mean, std = datamodule.statistics()
            with open_dict(cfg):
                cfg.data.mean, cfg.data.std = list(mean), list(std)
    with config.explained("task"):
        task = make_task(cfg, net)
    task.use_data(datamodule.contract())
    return datamodule, task


def make_task(cfg: DictConfig, net: Any) -> BaseTask:
    """The task ``cfg`` describes, around ``net``, with the run's config as it stands."""
    # plain values for the task: Hydra would wrap dict arguments in DictConfig, which checkpoints then
    # pickle and torch's weights_only loading refuses
    return instantiate(cfg.task, _partial_=True)(
        net=net,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        finetune_cfg=OmegaConf.to_container(cfg.finetune, resolve=True),
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )


def adopt_weights_normalization(cfg: DictConfig, net: Any) -> None:
    """Put the pretrained weights' statistics into ``cfg.data`` (``normalization=auto``)."""
    choice = cfg.get("normalization", "auto")
    if choice not in ("auto", "data"):
        raise config.ConfigError(f"normalization={choice}: choose auto (the weights') or data")
    stats = getattr(net, "preprocessing", None) or {}
    if choice == "auto" and stats.get("mean") and stats.get("std"):
        with open_dict(cfg):
            cfg.data.mean, cfg.data.std = list(stats["mean"]), list(stats["std"])
        log.info(
            "data: normalising with the pretrained weights' mean %s and std %s", stats["mean"], stats["std"]
        )


class _NoAdverts(logging.Filter):
    """Drops Lightning's "Tip: try installing <hosted service>" lines, printed at every Trainer's start, and
    its note that a task's figure callbacks "override existing callbacks passed to Trainer" (none were)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not text.startswith("💡 Tip:") and "LightningModule.configure_callbacks" not in text


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
# Lightning 2.6 calls a pytree API that torch 2.14 deprecates: nothing a user of cnnlab can act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# conf/hydra/launcher/ray.yaml completes the Ray launcher plugin's config of the same name on purpose, so that
# hydra/launcher=ray asks one GPU per job; Hydra notes that it matched the two
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")


def make_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks the config names."""
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def make_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the run's callbacks and loggers; checkpoints are written whole or not at all."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar

    from cnnlab.checkpoint_io import AtomicCheckpointIO

    with config.explained("callbacks"):
        callbacks = make_callbacks(cfg)
    options: dict[str, Any] = {}
    if not sys.stdout.isatty():
        # logs piped to a file or a cluster job's output: the epoch lines of EpochLog, not a redrawn bar
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        options["enable_progress_bar"] = False
    if cfg.get("search"):  # a trial of an Optuna search: report each epoch, let the pruner stop it
        from cnnlab.search import pruning_callback

        callbacks.append(pruning_callback(cfg))
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    if not loggers:  # nothing to log the learning rate to (logger=none): Lightning would refuse the monitor
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()], **options
    )


def refuse_ddp_in_multirun(cfg: DictConfig) -> None:
    """DDP re-launches the script, which a Hydra sweep cannot survive: say so (the sweep's start refuses it
    before any job; this is for a job started some other way)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    problem = config.ddp_in_sweep([str(cfg.trainer.get("strategy", "auto"))], launcher)
    if problem:
        raise config.ConfigError(problem)


def hparams_for_dashboard(cfg: DictConfig, task: BaseTask) -> dict[str, Any]:
    """A flat, fixed set of hyper-parameters, so every run of a sweep lines up in TensorBoard's HPARAMS."""
    picked = config.choices()
    return {
        "task": picked.get("task", task.name),
        "model": picked.get("model", cfg.model._target_.rsplit(".", 1)[-1]),
        "data": picked.get("data", cfg.data._target_.rsplit(".", 1)[-1]),
        "optimizer": picked.get("optimizer", cfg.optimizer._target_.rsplit(".", 1)[-1]),
        "scheduler": picked.get("scheduler", "none"),
        "augmentation": picked.get("augmentation", "none"),
        "finetune": str(cfg.finetune.get("freeze", 0)),
        "lr": float(cfg.optimizer.lr),
        "weight_decay": float(cfg.optimizer.get("weight_decay", 0.0)),
        "batch_size": int(cfg.data.batch_size),
        "max_epochs": int(cfg.trainer.get("max_epochs") or -1),
        "seed": int(cfg.seed),
        **task.dashboard_hparams(),
    }


class Phases:
    """Wall-clock seconds of each phase of a run, for metrics.json (``seconds``) and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"began": round(time.time(), 3)}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def record(self) -> dict[str, float]:
        """The phases so far, with the wall-clock time now (``ended``, seconds since the epoch)."""
        return {**self.seconds, "ended": round(time.time(), 3)}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole pipeline for ``cfg`` and return the final metrics (also written to metrics.json)."""
    import lightning.pytorch as L
    from lightning.pytorch.loggers import TensorBoardLogger

    phase = Phases()
    refuse_ddp_in_multirun(cfg)
    with config.explained("config"), phase("config"):
        config.validate(cfg)  # before anything runs: seeding, reading data, building the network
        config.warn_idle_options(cfg)
        L.seed_everything(cfg.seed, workers=True)
        with config.explained("callbacks"):
            make_callbacks(cfg)  # their options are checked before any data is read
    output_dir = Path(cfg.paths.output_dir)
    with phase("data"):
        datamodule, task = build(cfg)
    with config.explained("trainer"), phase("config"):
        trainer = make_trainer(cfg)

    if cfg.get("tuner", {}).get("lr_find"):
        from cnnlab.tuning import find_learning_rate

        options = {k: v for k, v in cfg.tuner.items() if k != "lr_find"}
        lr = find_learning_rate(trainer, task, datamodule, output_dir, **options)
        # the rate the run trains with, in its config as in its checkpoint
        cfg.optimizer.lr = lr
        task.hparams.run_config["optimizer"]["lr"] = lr
    if trainer.is_global_zero:
        runs.save_config(cfg, output_dir)
        runs.write_bad_files(output_dir, getattr(datamodule, "bad_files", []))

    resume_collection()
    with interruptible(trainer, output_dir), phase("fit"):
        # weights_only: a checkpoint holds plain values and tensors, never code to run
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics: dict[str, Any] = dict(trainer.callback_metrics)
    best = best_checkpoint(trainer)
    if cfg.get("test", True):
        with interruptible(trainer, output_dir), phase("test"):
            trainer.test(
                task, datamodule=datamodule, ckpt_path=str(best) if best else None, weights_only=True
            )
        metrics.update(trainer.callback_metrics)
    if not trainer.is_global_zero:
        return {}

    metric = str(cfg.optimized_metric)
    extra: dict[str, Any] = {
        "best_checkpoint": str(best) if best else None,
        "epochs": trainer.current_epoch,
        "optimized_metric": metric,
        "optimized_mode": task.metric_mode(metric),
    }
    # written before the export: a failed export never loses a trained run
    final = final_metrics(metrics, trainer)
    record = runs.write_metrics(output_dir / "metrics.json", final, {**extra, "seconds": phase.record()})
    if best and cfg.get("export"):
        with phase("export"):
            extra.update(export_run(best, output_dir / "export", cfg, datamodule))
        record = runs.write_metrics(output_dir / "metrics.json", final, {**extra, "seconds": phase.record()})
    scores = {
        f"hp/{k.replace('/', '_')}": v
        for k, v in record.items()
        if k.startswith(("val/", "test/")) and isinstance(v, float)
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # HPARAMS: the parameters beside the final scores
            logger.log_hyperparams(hparams_for_dashboard(cfg, task), metrics=scores)
        else:
            logger.log_hyperparams(hparams_for_dashboard(cfg, task))
        logger.save()
    log.info("metrics: %s", {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
    log.info("run folder: %s", output_dir)
    return record


def export_run(best: Path, folder: Path, cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """Export the best checkpoint, verified on validation images; what metrics.json records of it."""
    from cnnlab.export import export_checkpoint, summary

    chosen = cfg.export.get("formats")
    picked = [chosen] if isinstance(chosen, str) else list(chosen)
    try:
        described = export_checkpoint(best, folder, picked, datamodule.sample_images())
    except CnnlabError as err:
        log.error("export failed: %s", err)
        return {"export": None, "export_error": str(err)}
    for line in summary(described):
        log.info("export: %s", line)
    written = {fmt: info.get("file") for fmt, info in described["formats"].items() if "error" not in info}
    return {"export": str(folder) if written else None, "export_files": written}


@contextlib.contextmanager
def interruptible(trainer: L.Trainer, output_dir: Path) -> Iterator[None]:
    """Turn Lightning's exit after Ctrl-C into a ``RunInterrupted`` that says how to resume."""
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise RunInterrupted(interrupted_message(output_dir, trainer)) from None
        raise


def best_checkpoint(trainer: L.Trainer) -> Path | None:
    """The best checkpoint the run saved, or None (fast_dev_run, or no checkpoint callback)."""
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback else ""
    return Path(path) if path else None


def final_metrics(metrics: dict[str, Any], trainer: L.Trainer) -> dict[str, Any]:
    """Validation and test epoch metrics, with the best validation score the checkpoint callback saw."""
    kept = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/")) and not k.endswith("_step")}
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "best_model_score", None) is not None:
        kept[f"best/{callback.monitor}"] = callback.best_model_score
    return kept


def optimized_value(record: dict[str, Any], metric: str) -> float | None:
    """What a sweep optimises: the best validation score of the run, else the metric's final value."""
    for key in (f"best/{metric}", metric):
        if isinstance(record.get(key), (int, float)):
            return float(record[key])
    if metric not in record:
        raise config.ConfigError(
            f"optimized_metric={metric} is not among the run's metrics: {sorted(record)}"
        )
    return None


def run_task(cfg: DictConfig) -> float | None:
    """One run of ``train.py`` for ``cfg``: the metric a sweep optimises. A user's mistake is recorded in the
    run folder (``record_stop``) and raised as a ``CnnlabError`` (also for the Python API)."""
    try:
        # before the config tree is resolved for the log: a value that an interpolation checks (the metric
        # direction of optimized_metric) would otherwise fail inside OmegaConf with a traceback
        config.validate(cfg)
        config.log_config(cfg)
        record = train(cfg)
    except KeyboardInterrupt:  # before fit, or between fit and test
        stopped = RunInterrupted(interrupted_message(Path(cfg.paths.output_dir), None))
        record_stop(cfg, stopped)
        raise stopped from None
    except (CnnlabError, RuntimeError) as err:
        # a cnnlab error from a DataLoader worker comes back wrapped in the worker's traceback
        mistake = unwrap_worker_error(err)
        if mistake is None:
            raise
        record_stop(cfg, mistake)
        raise mistake from None
    return optimized_value(record, str(cfg.optimized_metric)) if record else None


def record_stop(cfg: DictConfig, err: CnnlabError) -> None:
    """Leave a stopped run's folder as a user finds it: the traceback in train.log, no empty TensorBoard log,
    and (outside a sweep, whose callback writes it) status.json saying why."""
    output_dir = Path(cfg.paths.output_dir)
    config.file_log().error("the run stopped", exc_info=err)
    runs.drop_empty_tensorboard(output_dir)
    if in_sweep():
        return
    interrupted = isinstance(err, RunInterrupted)
    message = " ".join(str(err).split())
    state, key = ("interrupted", "reason") if interrupted else ("failed", "error")
    runs.write_status(
        output_dir, state, ended=datetime.now().isoformat(timespec="milliseconds"), **{key: message}
    )


def in_sweep() -> bool:
    """Whether this run is a job of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    keep_freed_memory()  # here, not in run(): sweep launchers' workers (Ray, Slurm) start jobs through it too
    try:
        return run_task(cfg)
    except CnnlabError as err:
        # in a sweep the error goes back to Hydra, which marks the job failed and runs the next one
        if in_sweep():
            raise
        # its message alone on the console; the traceback is in train.log
        output_dir = Path(cfg.paths.output_dir)
        print(f"\ncnnlab: {err}\n(the run's log: {output_dir / 'train.log'})", file=sys.stderr)
        sys.exit(130 if isinstance(err, RunInterrupted) else 1)


def interrupted_message(output_dir: Path, trainer: L.Trainer | None) -> str:
    """What an interrupted run says: where it stopped and how to continue it."""
    where = f" at epoch {trainer.current_epoch}, step {trainer.global_step}" if trainer is not None else ""
    if (output_dir / runs.LAST_CKPT).is_file():
        return f"interrupted{where}. Continue it with: {runs.resume_command(output_dir)}"
    return f"interrupted{where}, before its first checkpoint: nothing to resume, run it again"


#: whether ``run`` holds garbage collection back while the run starts
_collection_held = False


def run() -> None:
    """Console entry point: ``main``, then the process ends as soon as the run is written."""
    global _collection_held
    # imports and the run's setup make about half a million objects that live as long as the process, and
    # each full collection walks them all (0.1-0.3 s each, 1.1 s of a 13 s digits run): none while the run
    # starts, then they are frozen out of every later collection (what gc.freeze's documentation advises)
    gc.disable()
    _collection_held = True
    main()
    leave()


#: glibc's ``mallopt`` parameters (malloc.h) and the values ``keep_freed_memory`` gives them, in bytes
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 64 << 20
#: the variables through which a user sets these thresholds (or another allocator) for a run
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Fix glibc malloc's thresholds so that the memory a training step frees serves the next step.

    CPU tensors come from malloc. glibc maps a fresh block for every request above its mmap threshold
    (128 KiB at first, raised as such blocks are freed, in an order that differs from run to run) and hands
    the free top of its heap back to the system beyond its trim threshold: each step's activations and
    gradients then touch new zeroed pages. The default run makes 230k-990k page faults that way, and 155k in
    every run with blocks up to 32 MiB kept in the heap and up to 64 MiB of free top kept, at the same peak
    memory. Returns whether the thresholds were set: not off glibc, nor where the user's environment sets
    them or preloads another allocator.
    """
    if sys.platform != "linux" or any(os.environ.get(name) for name in MALLOC_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
    except OSError:
        return False
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):  # glibc's thresholds only
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mapped and trimmed)


def resume_collection() -> None:
    """Freeze what the start made and collect garbage again, before training (once, after ``run``)."""
    global _collection_held
    if _collection_held:
        gc.freeze()
        gc.enable()
        _collection_held = False


def leave(code: int = 0) -> None:
    """End the process now: logs flushed and exit handlers run, without Python's teardown of every module,
    which takes over a second after a run and writes nothing."""
    atexit._run_exitfuncs()  # what the interpreter would run at exit (loggers' and Ray's shutdown hooks)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    """Train from the command line; ``resume=<run folder|latest>`` reopens a run before Hydra starts."""
    try:
        sys.argv = [sys.argv[0], *runs.resume_overrides(sys.argv[1:])]
    except (FileNotFoundError, CnnlabError) as err:
        sys.exit(f"cnnlab: {err}")
    try:
        _hydra_main()
    except BrokenPipeError:  # `--help | head`: the reader left; nothing to report, nothing more to write
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
