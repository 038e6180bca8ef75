"""Evaluate a checkpoint on its dataset's test split: ``python -m cnnlab.evaluate ckpt_path=CKPT``.

The network, task and dataset come from the config saved in the checkpoint; ``data.*`` overrides (say
``data.root=...`` on another machine) are merged over it. Metrics are printed and written to metrics.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab import CONF_DIR, checkpoints, config, runs

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test ``cfg.ckpt_path`` and return its metrics (also written to the eval folder's metrics.json)."""
    if cfg.split not in ("test", "val"):
        raise config.ConfigError(f"split={cfg.split} is not an evaluation split; choose test or val")
    ckpt_path = Path(cfg.ckpt_path)
    saved = OmegaConf.create(checkpoints.run_config(checkpoints.read_checkpoint(ckpt_path)))
    data_cfg = OmegaConf.merge(saved.data, cfg.get("data") or {})
    task = checkpoints.load_task(ckpt_path)
    datamodule = instantiate(data_cfg, _partial_=True)(augmentation=None, spec=task.samples)
    callbacks = [
        instantiate(c)
        for c in (saved.get("callbacks") or {}).values()
        if c is not None and "ModelCheckpoint" not in c["_target_"]
    ]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    run = trainer.test if cfg.split == "test" else trainer.validate
    results = run(task, datamodule=datamodule)[0]
    record = runs.write_metrics(
        Path(cfg.paths.output_dir) / "metrics.json", results, {"checkpoint": str(ckpt_path)}
    )
    log.info("metrics: %s", {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
    return record


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """Console entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
