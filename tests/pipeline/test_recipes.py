"""Every recipe of conf/experiment builds what its lesson teaches and trains a batch, on small files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import open_dict
from torch import nn
from torchvision.transforms import v2

from cnnlab import CONF_DIR
from cnnlab.train import build, train

RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def linear_shapes(net: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]


def has(net: nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in net.modules())


def trainable_outside_head(task: Any) -> int:
    return sum(p.numel() for stage in task.net.stages for p in stage.parameters() if p.requires_grad)


def train_steps(datamodule: Any) -> list[type]:
    return [type(step) for step in getattr(datamodule.train_set.transform, "transforms", [])]


# what each recipe's lesson is, checked on the datamodule and task it builds
LESSONS: dict[str, Callable[[Any, Any], bool]] = {
    # the course's MNIST MLP: 784 inputs, two hidden layers of 512, ten classes
    "mnist_mlp": lambda dm, task: linear_shapes(task.net) == [(784, 512), (512, 512), (512, 10)],
    # the first CIFAR CNN: 16-32-64 filters, no batch norm
    "cifar10_cnn": lambda dm, task: (
        not has(task.net, nn.BatchNorm2d)
        and [m.out_channels for m in task.net.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 64]
    ),
    # the improved one: batch norm, dropout and RandAugment on the training images only
    "cifar10_improved": lambda dm, task: (
        has(task.net, nn.BatchNorm2d) and has(task.net, nn.Dropout2d) and v2.RandAugment in train_steps(dm)
    ),
    # landmarks from scratch: 50 classes, five conv blocks, nothing pretrained
    "landmarks_scratch": lambda dm, task: (
        linear_shapes(task.net)[-1][1] == dm.num_classes
        and len(task.net.stages) == 5
        and task.net.preprocessing is None
    ),
    # transfer: every backbone stage frozen, only the new head trains
    "landmarks_transfer": lambda dm, task: (
        trainable_outside_head(task) == 0 and all(p.requires_grad for p in task.net.head.parameters())
    ),
    # gradual unfreezing: a linear probe first, one stage released every 3 epochs
    "flowers_transfer": lambda dm, task: (
        task.freezer.frozen_at(0) == len(task.net.stages)
        and task.freezer.frozen_at(3) == len(task.net.stages) - 1
    ),
    # translated digits 5-9 from 4 images per class, a fifth of them for validation
    "transfer_demo": lambda dm, task: (
        dm.class_names == ["5", "6", "7", "8", "9"]
        and (len(dm.train_set), len(dm.val_set)) == (16, 4)
        and dm.image_size == 28
    ),
    # the source task: translated digits 0-4, every image
    "transfer_demo_pretrain": lambda dm, task: (
        dm.class_names == ["0", "1", "2", "3", "4"] and len(dm.train_set) > 500
    ),
}


def test_every_recipe_has_its_lesson_checked() -> None:
    assert set(RECIPES) == set(LESSONS)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds_its_lesson_and_trains_a_batch(
    make_cfg, data_dir: Path, fake_cifar_accepted, recipe: str
) -> None:
    cfg = make_cfg(
        f"experiment={recipe}", "debug=fdr", "logger=none", "data.batch_size=2", "task.figures=false"
    )
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
    datamodule, task = build(cfg)
    datamodule.setup("fit")
    assert LESSONS[recipe](datamodule, task)
    record = train(cfg)
    assert 0.0 <= record["test/acc"] <= 1.0 and record["test/loss"] is not None
