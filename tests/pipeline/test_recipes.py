"""Every recipe of conf/experiment composes and trains a batch at its own sizes, on small files."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from cnnlab import CONF_DIR
from cnnlab.train import train

RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# what each recipe must keep of its lesson, checked on the composed config
LESSONS = {
    "mnist_mlp": {"data.image_size": 28, "model.hidden": [512, 512]},
    "cifar10_cnn": {"model.batch_norm": False, "model.widths": [16, 32, 64]},
    "cifar10_improved": {"model.batch_norm": True, "augmentation.num_ops": 2, "model.init": "kaiming"},
    "landmarks_scratch": {"model._target_": "cnnlab.models.simple_cnn.SimpleCNN", "data.num_classes": 50},
    "landmarks_transfer": {"model.weights": "DEFAULT", "finetune.freeze": "all", "data.num_classes": 50},
    "flowers_transfer": {"model.arch": "resnet50", "finetune.unfreeze_every": 3},
    "transfer_demo": {"data.classes": [5, 6, 7, 8, 9], "data.canvas": 14, "callbacks.checkpoint": None},
    "transfer_demo_pretrain": {"data.classes": [0, 1, 2, 3, 4], "data.canvas": 14, "data.image_size": 28},
}


def test_every_recipe_has_its_lesson_checked() -> None:
    assert set(RECIPES) == set(LESSONS)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_a_batch(make_cfg, data_dir: Path, fake_cifar_accepted, recipe: str) -> None:
    cfg = make_cfg(f"experiment={recipe}", "debug=fdr", "logger=none", "data.batch_size=2")
    for key, value in LESSONS[recipe].items():
        node, *path = key.split(".")
        found = cfg[node]
        for part in path:
            found = found[part]
        assert found == value, key
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
        cfg.callbacks = {}
        cfg.data.num_workers = 0
        if "download" in cfg.data:
            cfg.data.download = False
        if cfg.data._target_.startswith("cnnlab.data.image_folder"):
            # the small folders hold 3 classes; ImageNet weights cannot be fetched here
            cfg.data.num_classes = 3
            cfg.model.weights = None
            if "landmarks" not in cfg.data._target_.lower():
                cfg.data.root = str(data_dir / "folder")
    record = train(cfg)
    assert 0.0 <= record["test/acc"] <= 1.0 and record["test/loss"] is not None
