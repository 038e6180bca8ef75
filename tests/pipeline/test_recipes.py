"""Every recipe of conf/experiment builds what its lesson teaches and trains a batch, on small files."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from omegaconf import open_dict
from torch import nn
from torchvision.transforms import v2

import cnnlab.train
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


def code_shape(datamodule: Any, task: Any) -> tuple[int, ...]:
    """The shape of one image's bottleneck code."""
    size = datamodule.image_size
    return tuple(task.net.encode(torch.zeros(1, datamodule.in_channels, size, size)).shape[1:])


def preset(cfg: Any) -> str:
    return cfg.augmentation._target_.rsplit(".", 1)[-1]


def named(obj: Any) -> str:
    return type(obj).__name__


# what each recipe's lesson is, checked on the datamodule and task it builds
LESSONS: dict[str, Callable[[Any, Any, Any], bool]] = {
    # the course's MNIST MLP: 784 inputs, two hidden layers of 512, ten classes
    "mnist_mlp": lambda cfg, dm, task: linear_shapes(task.net) == [(784, 512), (512, 512), (512, 10)],
    # the first CIFAR CNN: 16-32-64 filters, no batch norm
    "cifar10_cnn": lambda cfg, dm, task: (
        not has(task.net, nn.BatchNorm2d)
        and [m.out_channels for m in task.net.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 64]
    ),
    # the improved one: batch norm, dropout and RandAugment on the training images only
    "cifar10_improved": lambda cfg, dm, task: (
        has(task.net, nn.BatchNorm2d) and has(task.net, nn.Dropout2d) and v2.RandAugment in train_steps(dm)
    ),
    # landmarks from scratch: 50 classes, five conv blocks, nothing pretrained
    "landmarks_scratch": lambda cfg, dm, task: (
        linear_shapes(task.net)[-1][1] == dm.num_classes
        and len(task.net.stages) == 5
        and task.net.preprocessing is None
    ),
    # transfer: every backbone stage frozen, only the new head trains
    "landmarks_transfer": lambda cfg, dm, task: (
        trainable_outside_head(task) == 0 and all(p.requires_grad for p in task.net.head.parameters())
    ),
    # gradual unfreezing: a linear probe first, one stage released every 3 epochs
    "flowers_transfer": lambda cfg, dm, task: (
        task.freezer.frozen_at(0) == len(task.net.stages)
        and task.freezer.frozen_at(3) == len(task.net.stages) - 1
    ),
    # translated digits 5-9 from 4 images per class, a fifth of them for validation
    "transfer_demo": lambda cfg, dm, task: (
        dm.class_names == ["5", "6", "7", "8", "9"]
        and (len(dm.train_set), len(dm.val_set)) == (16, 4)
        and dm.image_size == 28
    ),
    # the source task: translated digits 0-4, every image
    "transfer_demo_pretrain": lambda cfg, dm, task: (
        dm.class_names == ["0", "1", "2", "3", "4"] and len(dm.train_set) > 500
    ),
    # anomalies among the digits: eights only in training, other digits in validation too, a 32-number code
    "ae_anomaly_digits": lambda cfg, dm, task: (
        task.name == "anomaly"
        and {t["label"] for _, t in dm.train_set} == {8}
        and {t["anomaly"] for _, t in dm.val_set} == {0, 1}
        and code_shape(dm, task) == (32,)
    ),
    "ae_denoise_digits": lambda cfg, dm, task: task.name == "autoencoder" and task.denoise,
    # the course's network: 784-256-32 and back, on MNIST zeros
    "ae_anomaly_mnist": lambda cfg, dm, task: (
        linear_shapes(task.net) == [(784, 256), (256, 32), (32, 256), (256, 784)] and dm.normal_classes == [0]
    ),
    "ae_denoise_mnist": lambda cfg, dm, task: task.denoise and task.hparams.noise_level == 0.5,
    # 128 px down to an 8 x 8 map of 16 channels; scored by the worst pixels
    "ae_anomaly_mvtec": lambda cfg, dm, task: (
        code_shape(dm, task) == (16, 8, 8) and task.hparams.score == "topk"
    ),
    # every pixel of the shapes, by a UNet from scratch
    "seg_shapes_unet": lambda cfg, dm, task: (
        named(task.net) == "UNet" and named(dm) == "ShapesDataModule" and task.num_classes == 4
    ),
    # pedestrians against the background, a UNet from scratch, Dice for the smaller class
    "seg_pennfudan": lambda cfg, dm, task: (
        named(task.net) == "UNet" and task.num_classes == 2 and task.hparams.loss == "ce+dice"
    ),
    # DeepLabV3 on a MobileNetV3 backbone with its auxiliary head; the backbone learns slower than the head
    "seg_pennfudan_deeplab": lambda cfg, dm, task: (
        named(task.net) == "DeepLabV3" and task.net.aux_loss and cfg.finetune.backbone_lr_mult < 1
    ),
    # the 21 VOC classes, torchvision's scale jitter and crops
    "seg_voc": lambda cfg, dm, task: (
        task.num_classes == 21 and named(dm) == "VOCSegmentationDataModule" and preset(cfg) == "standard"
    ),
    # one-stage detectors: FCOS on the shapes, RetinaNet with SSD's crops on photos
    "det_shapes": lambda cfg, dm, task: (
        named(task.net) == "FCOS" and named(dm) == "ShapesDataModule" and preset(cfg) == "flip"
    ),
    "det_pennfudan": lambda cfg, dm, task: (
        named(task.net) == "RetinaNet" and named(dm) == "PennFudanDataModule"
    ),
    "det_voc": lambda cfg, dm, task: named(task.net) == "RetinaNet" and named(dm) == "VOCDetectionDataModule",
    # capsules: the paper's network at 5x5 kernels on 16 px digits, three routing iterations, a decoder
    "capsnet_digits": lambda cfg, dm, task: (
        named(task.net) == "CapsNet"
        and task.net.stages[0][0].kernel_size == (5, 5)
        and task.net.head.iterations == 3
        and task.net.decoder is not None
    ),
    # the paper's setting: 28 px MNIST shifted by up to 2 px, 8.2M parameters, Adam decaying every step
    "capsnet_mnist": lambda cfg, dm, task: (
        sum(p.numel() for p in task.net.parameters()) == 8_215_568
        and dm.image_size == 28
        and cfg.augmentation.padding == 2
        and cfg.scheduler.interval == "step"
    ),
    # airbench's style: in memory, batched flips and 2 px translations, label smoothing, compiled
    "cifar10_speedrun": lambda cfg, dm, task: (
        dm.memory is not None
        and cfg.augmentation.padding == 2
        and task.hparams.label_smoothing == 0.2
        and cfg.compile is True
        and [m.out_channels for m in task.net.modules() if isinstance(m, nn.Conv2d)]
        == [64, 64, 256, 256, 256, 256]
    ),
    "det_coco": lambda cfg, dm, task: (
        named(task.net) == "RetinaNet" and named(dm) == "CocoDataModule" and preset(cfg) == "ssd"
    ),
}


def test_every_recipe_has_its_lesson_checked() -> None:
    assert set(RECIPES) == set(LESSONS)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds_its_lesson_and_trains_a_batch(
    make_cfg, fit_small_files, fake_cifar_accepted, recipe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(
        f"experiment={recipe}", "debug=fdr", "logger=none", "data.batch_size=2", "task.figures=false"
    )
    with open_dict(cfg):
        fit_small_files(cfg)
        if recipe.startswith(("seg_", "det_")):
            cfg.data.image_size = 64  # photos of a few dozen pixels here
        if recipe == "ae_anomaly_digits":
            cfg.data.batch_size = 64  # the one validation batch holds all of it, the anomalies at its end too
    lesson = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.compile = False  # torch.compile takes a minute on a CPU; tests/pipeline/test_speed.py runs it
    built: list[tuple[Any, Any]] = []  # what the run itself builds, looked at once it has trained

    def build_and_keep(run_cfg):
        built.append(build(run_cfg))
        return built[-1]

    monkeypatch.setattr(cnnlab.train, "build", build_and_keep)
    record = train(cfg)
    ((datamodule, task),) = built
    assert LESSONS[recipe](lesson, datamodule, task)
    # the test split's form of what the recipe optimises, e.g. test/miou for val/miou
    tested = "test/" + cfg.optimized_metric.split("/", 1)[1]
    assert record["test/loss"] is not None and record[tested] is not None
