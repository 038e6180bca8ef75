"""Evaluate a checkpoint on its dataset's test split: ``python -m cnnlab.evaluate ckpt_path=CKPT``.

The network, task and dataset come from the config saved in the checkpoint; ``data.*`` overrides (say
``data.root=...`` on another machine) are merged over it. ``data=NAME`` reads another dataset of the same task
and classes (a detector trained on YOLO files tested on a COCO export) with the checkpoint's image size,
channels and normalisation. Metrics are printed and written to metrics.json.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab import CONF_DIR, checkpoints, config, runs
from cnnlab.errors import ClassCountError, CnnlabError, ConfigError, unwrap_worker_error

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test ``cfg.ckpt_path`` and return its metrics (also written to the eval folder's metrics.json)."""
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split} is not an evaluation split; choose test or val")
    config.check_values(cfg)
    ckpt_path = Path(cfg.ckpt_path)
    saved = OmegaConf.create(checkpoints.run_config(checkpoints.read_checkpoint(ckpt_path)))
    data_cfg = evaluation_data(saved, cfg.get("data") or OmegaConf.create({}))
    config.check_values(OmegaConf.create({"data": data_cfg}))
    task_cls = get_class(saved.task._target_)
    config.check_data_serves(
        task_cls, data_cfg, task_cls.name, config.choices().get("data", data_cfg._target_.rsplit(".", 1)[-1])
    )
    task = checkpoints.load_task(ckpt_path)
    with config.explained("data"):
        datamodule = instantiate(data_cfg, _partial_=True)(augmentation=None, spec=task.samples)
        check_classes(datamodule, task.contract.get("class_names"), ckpt_path)
    callbacks = [
        instantiate(c)
        for c in (saved.get("callbacks") or {}).values()
        if c is not None and "ModelCheckpoint" not in c["_target_"]
    ]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    run = trainer.test if cfg.split == "test" else trainer.validate
    results = run(task, datamodule=datamodule, weights_only=True)[0]
    record = runs.write_metrics(
        Path(cfg.paths.output_dir) / "metrics.json", results, {"checkpoint": str(ckpt_path)}
    )
    log.info("metrics: %s", {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
    return record


#: what the network was trained to see: another dataset is read as the checkpoint's own was
AS_TRAINED = ("image_size", "resize_size", "in_channels", "mean", "std", "normal_classes", "seed")


def evaluation_data(saved: DictConfig, given: DictConfig) -> DictConfig:
    """The checkpoint's data config with ``data.*`` overrides, or another reader's (``data=NAME``)."""
    target = given.get("_target_")
    if target is None or target == saved.data._target_:
        return OmegaConf.merge(saved.data, given)
    chosen = OmegaConf.merge(given, {k: saved.data[k] for k in AS_TRAINED if k in saved.data and k in given})
    log.info(
        "evaluating on %s, read as the checkpoint was trained: %s",
        target.rsplit(".", 1)[-1],
        ", ".join(f"{k}={chosen[k]}" for k in AS_TRAINED if k in chosen),
    )
    return chosen


def check_classes(datamodule: Any, trained: list[str] | None, ckpt_path: Path) -> None:
    """Refuse data whose classes are not the ones the checkpoint's model was trained on, naming both."""
    datamodule.prepare_data()
    try:
        datamodule.load_split("test")
        found = list(datamodule.class_names)
    except ClassCountError as err:
        found = err.found
    if trained and found != list(trained):
        raise ConfigError(
            f"the data's classes are {found}, but {ckpt_path} was trained on {list(trained)}: its scores "
            "would be compared with the wrong labels. Evaluate it on data of the same classes (same names, "
            "same order)."
        )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except (CnnlabError, RuntimeError) as err:
        mistake = unwrap_worker_error(err)  # a DataLoader worker's error comes wrapped in its traceback
        if mistake is None:
            raise
        config.file_log().error("evaluation stopped", exc_info=err)
        sys.exit(f"cnnlab-eval: {mistake}")


def data_overrides(argv: list[str]) -> list[str]:
    """``data.KEY=VALUE`` adds to the checkpoint's data config; Hydra must be told so (``++``).

    ``+data=NAME`` means ``data=NAME``; a reader class given as ``data._target_`` would keep the checkpoint
    reader's keys, which another reader does not take, so it is refused for ``data=NAME``.
    """
    given = []
    for arg in argv:
        key = arg.lstrip("+").split("=", 1)[0]
        if key == "data._target_":
            sys.exit(
                f"cnnlab-eval: {arg}: choose another dataset with data=NAME (one of "
                f"{', '.join(config.options('data', lambda c: True))}) and its data.* keys"
            )
        if key == "data":
            given.append(arg.lstrip("+"))
        else:
            given.append(f"++{arg.lstrip('+')}" if key.startswith("data.") else arg)
    return given


def main() -> None:
    """Console entry point."""
    sys.argv = [sys.argv[0], *data_overrides(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
