"""Freeze depth, frozen batch norm, parameter groups and gradual unfreezing through the real pipeline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fakedata import write_landmarks
from omegaconf import open_dict
from torch import nn

from cnnlab.finetune import StageFreezer, parameter_groups, parse_freeze
from cnnlab.train import build, make_trainer, train

SMALL = ["data.image_size=32", "data.resize_size=36", "data.batch_size=8", "data.num_workers=0"]


@pytest.fixture
def landmarks_cfg(make_cfg, tmp_path: Path):
    """`model=resnet data=landmarks` on a small folder laid out like the landmark dataset."""
    write_landmarks(tmp_path / "data" / "landmarks", n_classes=4, n_per_class=12)

    def _make(*overrides: str):
        cfg = make_cfg("model=resnet", "data=landmarks", "data.num_classes=4", *SMALL, *overrides)
        with open_dict(cfg):
            cfg.callbacks = {}
            cfg.trainer.enable_checkpointing = False  # else Lightning's own writes ResNet-18 every epoch
        return cfg

    return _make


def trainable_per_stage(net: nn.Module) -> list[int]:
    return [sum(p.numel() for p in stage.parameters() if p.requires_grad) for stage in net.stages]


@pytest.mark.parametrize(("freeze", "frozen"), [(0, 0), (1, 1), (2, 2), (3, 3), ("all", 5)])
def test_freeze_depth_counts_trainable_parameters_per_stage(landmarks_cfg, freeze, frozen: int) -> None:
    _, task = build(landmarks_cfg("finetune=partial", f"finetune.freeze={freeze}"))
    counts = trainable_per_stage(task.net)
    totals = [sum(p.numel() for p in stage.parameters()) for stage in task.net.stages]
    assert counts[:frozen] == [0] * frozen
    assert counts[frozen:] == totals[frozen:]
    assert all(p.requires_grad for p in task.net.head.parameters())


def bn_statistics(net: nn.Module, stages: slice) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{name}": buf.clone()
        for i, stage in list(enumerate(net.stages))[stages]
        for name, buf in stage.named_buffers()
        if "running" in name
    }


def test_frozen_backbone_trains_only_the_head_and_keeps_batch_norm_still(landmarks_cfg) -> None:
    cfg = landmarks_cfg("finetune=frozen", "trainer.max_epochs=2", "test=false", "export=null")
    datamodule, task = build(cfg)
    before = copy.deepcopy(task.net.state_dict())
    trainer = make_trainer(cfg)
    trainer.fit(task, datamodule=datamodule)
    assert trainer.current_epoch == 2
    after = task.net.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("head.") for k in moved), sorted(moved)[:5]
    # a later model.train() (Lightning calls it every epoch) leaves the frozen stages in eval mode
    task.train()
    assert all(not m.training for stage in task.net.stages for m in stage.modules())
    assert task.net.head.training


def test_partial_freeze_keeps_frozen_statistics_and_trains_the_rest(landmarks_cfg) -> None:
    cfg = landmarks_cfg(
        "finetune=partial", "finetune.freeze=2", "trainer.max_epochs=2", "test=false", "export=null"
    )
    datamodule, task = build(cfg)
    frozen_before, free_before = bn_statistics(task.net, slice(0, 2)), bn_statistics(task.net, slice(2, None))
    make_trainer(cfg).fit(task, datamodule=datamodule)
    for key, value in bn_statistics(task.net, slice(0, 2)).items():
        assert torch.equal(value, frozen_before[key]), key
    assert any(not torch.equal(v, free_before[k]) for k, v in bn_statistics(task.net, slice(2, None)).items())


def test_every_stage_has_its_group_from_the_first_step(landmarks_cfg) -> None:
    _, task = build(landmarks_cfg("finetune=gradual"))
    groups = parameter_groups(task.net, 1e-3, {"backbone_lr_mult": 0.1, "layer_decay": 0.5})
    assert [g["name"] for g in groups] == ["stage0", "stage1", "stage2", "stage3", "stage4", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4 * 0.5**k for k in (5, 4, 3, 2, 1)] + [1e-3])
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in task.net.parameters())


def test_gradual_unfreezing_releases_one_stage_per_period() -> None:
    net = nn.Module()
    net.stages = nn.ModuleList([nn.Linear(2, 2) for _ in range(4)])
    freezer = StageFreezer(net, {"freeze": "all", "unfreeze_every": 2, "unfreeze_to": 1})
    assert [freezer.frozen_at(e) for e in range(10)] == [4, 4, 3, 3, 2, 2, 1, 1, 1, 1]
    assert not any(p.requires_grad for p in net.stages[0].parameters())  # never released
    assert all(p.requires_grad for p in net.stages[1].parameters())  # released later: gradients dropped
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    freezer.drop_gradients(epoch=2)  # stages 1 and 2 frozen now, 3 released
    assert [net.stages[i].weight.grad is None for i in (1, 2, 3)] == [True, True, False]


@pytest.mark.parametrize("bad", [-1, 6, "half", True])
def test_bad_freeze_values_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="finetune.freeze"):
        parse_freeze(bad, 5)


def gradual_state(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    return {
        "epoch": ckpt["epoch"],
        "lrs": [g["lr"] for g in groups],
        "names": [g["name"] for g in groups],
        "weights": ckpt["state_dict"],
    }


@pytest.mark.slow
def test_gradual_run_resumed_after_an_unfreeze_matches_an_uninterrupted_one(
    landmarks_cfg, tmp_path: Path
) -> None:
    common = [
        "finetune=gradual",
        "finetune.unfreeze_every=1",
        "scheduler=cosine",
        "trainer.max_epochs=3",
        "test=false",
        "export=null",
    ]
    straight = landmarks_cfg(*common)
    with open_dict(straight):
        straight.paths.output_dir = str(tmp_path / "straight")
        straight.trainer.enable_checkpointing = True
        straight.callbacks = {
            "last": {
                "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                "dirpath": str(tmp_path / "straight" / "checkpoints"),
                "filename": "last",
                "monitor": None,
            }
        }
    train(straight)
    interrupted = copy.deepcopy(straight)
    with open_dict(interrupted):
        interrupted.paths.output_dir = str(tmp_path / "interrupted")
        interrupted.callbacks.last.dirpath = str(tmp_path / "interrupted" / "checkpoints")
        # stops after the first unfreeze (epoch 1 released a stage); by max_steps, since max_epochs
        # shapes the cosine schedule
        steps_per_epoch = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt")["global_step"] // 3
        interrupted.trainer.max_steps = 2 * steps_per_epoch
    train(interrupted)
    assert gradual_state(tmp_path / "interrupted")["epoch"] == 1
    with open_dict(interrupted):
        interrupted.trainer.max_steps = -1
        interrupted.ckpt_path = str(tmp_path / "interrupted" / "checkpoints" / "last.ckpt")
    datamodule, task = build(interrupted)
    trainer = make_trainer(interrupted)
    trainer.fit(task, datamodule=datamodule, ckpt_path=interrupted.ckpt_path)
    assert task.freezer.frozen_at(trainer.current_epoch - 1) == 3  # five stages, released one per epoch
    a, b = gradual_state(tmp_path / "straight"), gradual_state(tmp_path / "interrupted")
    assert a["epoch"] == b["epoch"] == 2 and a["names"] == b["names"]
    assert a["lrs"] == pytest.approx(b["lrs"])
    for key, value in a["weights"].items():
        torch.testing.assert_close(b["weights"][key], value, msg=key)


def test_a_network_without_stages_cannot_be_frozen() -> None:
    with pytest.raises(ValueError, match="no stages"):
        StageFreezer(nn.Linear(2, 2), {"freeze": 1})
