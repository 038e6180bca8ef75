"""What makes runs fast without changing what they compute: one checkpoint write, compile, channels-last."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from cnnlab.config import ConfigError
from cnnlab.train import build, train

QUICK = ("model=simple_cnn", "model.widths=[8,16]", "model.head_hidden=16", "logger=none", "export=null")


def checkpoints(cfg) -> tuple[Path, Path]:
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    return folder / "best.ckpt", folder / "last.ckpt"


def test_an_epoch_that_writes_the_best_checkpoint_links_last_to_it(make_cfg) -> None:
    cfg = make_cfg(*QUICK, "trainer.max_epochs=1")
    train(cfg)
    best, last = checkpoints(cfg)
    assert os.stat(best).st_ino == os.stat(last).st_ino  # one file, written once
    assert (
        torch.load(last, weights_only=True)["global_step"]
        == torch.load(best, weights_only=True)["global_step"]
    )


def test_an_epoch_without_a_better_score_writes_last_on_its_own(make_cfg) -> None:
    # a rate too small to change the scores: the second epoch is no better, so best stays at the first
    cfg = make_cfg(*QUICK, "trainer.max_epochs=2", "optimizer.lr=1e-12", "optimizer.weight_decay=0")
    train(cfg)
    best, last = checkpoints(cfg)
    assert os.stat(best).st_ino != os.stat(last).st_ino
    assert (
        torch.load(best, weights_only=True)["epoch"] == 0
        and torch.load(last, weights_only=True)["epoch"] == 1
    )


def test_epoch_metrics_reach_tensorboard_once_per_epoch_whatever_the_logging_interval(make_cfg) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 20 steps an epoch, logged every 50: step values reach TensorBoard rarely, epoch values every epoch
    cfg = make_cfg(*QUICK[:-2], "export=null", "trainer.max_epochs=2", "trainer.log_every_n_steps=50")
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"))
    events.Reload()
    for tag in ("train/acc", "train/f1", "train/loss_epoch", "val/acc", "val/loss"):
        assert len(events.Scalars(tag)) == 2, tag
    assert "train/loss_step" not in events.Tags()["scalars"]  # no step reached the interval


def test_the_training_loss_is_logged_every_interval_and_its_epoch_mean_once(make_cfg, monkeypatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cnnlab.tasks.classification import ClassificationTask

    seen: list[tuple[int, float, int]] = []
    original = ClassificationTask.training_step

    def spy(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        seen.append((self.current_epoch, float(loss), len(batch[0])))
        return loss

    monkeypatch.setattr(ClassificationTask, "training_step", spy)
    # 20 steps an epoch, 2 epochs, logged every 10 steps (no progress bar under pytest)
    cfg = make_cfg(*QUICK[:-2], "export=null", "trainer.max_epochs=2", "trainer.log_every_n_steps=10")
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"))
    events.Reload()
    assert len(seen) == 40
    steps = [e.value for e in events.Scalars("train/loss_step")]
    assert steps == pytest.approx([seen[i][1] for i in (9, 19, 29, 39)], rel=1e-5)
    epochs = [e.value for e in events.Scalars("train/loss_epoch")]
    means = [
        sum(loss * n for e, loss, n in seen if e == epoch) / sum(n for e, _, n in seen if e == epoch)
        for epoch in (0, 1)
    ]
    assert epochs == pytest.approx(means, rel=1e-5)


def test_the_run_records_the_seconds_of_each_phase(make_cfg) -> None:
    cfg = make_cfg(*QUICK, "trainer.max_epochs=1")
    train(cfg)
    seconds = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["seconds"]
    assert {"config", "data", "fit", "test", "began", "ended"} <= set(seconds)
    assert all(seconds[k] >= 0 for k in ("config", "data", "fit", "test"))
    assert seconds["ended"] - seconds["began"] >= seconds["fit"] + seconds["test"]


def test_channels_last_is_a_choice_of_three(make_cfg) -> None:
    cfg = make_cfg(*QUICK, "channels_last=true")
    _, task = build(cfg)
    task.on_fit_start()
    conv = next(m for m in task.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    cfg = make_cfg(*QUICK, "channels_last=auto")
    _, task = build(cfg)
    task.on_fit_start()  # auto: on a GPU only
    conv = next(m for m in task.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    with open_dict(cfg):
        cfg.channels_last = "sideways"
    _, task = build(cfg)
    with pytest.raises((ValueError, ConfigError), match="channels_last=sideways: choose auto"):
        task.on_fit_start()


@pytest.mark.slow
def test_a_compiled_network_trains_and_checkpoints_the_plain_one(make_cfg, caplog) -> None:
    cfg = make_cfg(
        "model=mlp", "compile=true", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "logger=none"
    )
    with caplog.at_level(logging.INFO, logger="cnnlab.tasks.base"):
        record = train(cfg)
    assert "compile: the first training step took" in caplog.text
    best, _ = checkpoints(cfg)
    keys = torch.load(best, weights_only=True)["state_dict"]
    assert keys and not any("_orig_mod" in k for k in keys)
    assert record["test/acc"] > 0.3 and record["export"] is not None


def test_the_command_line_collects_no_garbage_while_it_starts_and_freezes_what_the_start_made(
    monkeypatch,
) -> None:
    import gc

    from cnnlab import train as entry

    seen: dict[str, object] = {}

    def fake_main() -> None:  # what main() does between the two: the run's start, then its training
        seen["while starting"] = gc.isenabled()
        entry.resume_collection()
        seen["while training"] = gc.isenabled()
        seen["frozen"] = gc.get_freeze_count()
        entry.resume_collection()  # a sweep's next job: nothing more to do
        seen["second job"] = gc.isenabled()

    monkeypatch.setattr(entry, "main", fake_main)
    monkeypatch.setattr(entry, "leave", lambda code=0: None)
    try:
        entry.run()
    finally:
        gc.unfreeze()
        gc.enable()
    assert seen["while starting"] is False
    assert seen["while training"] is True and seen["second job"] is True
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 10_000  # the imports' objects


def test_a_run_from_python_leaves_garbage_collection_alone(make_cfg) -> None:
    import gc

    cfg = make_cfg(*QUICK, "trainer.max_epochs=1", "test=false")
    gc.disable()  # the caller's choice, kept
    try:
        train(cfg)
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_a_command_line_run_collects_garbage_again_before_it_trains(make_cfg, monkeypatch) -> None:
    import gc

    import lightning.pytorch as L

    from cnnlab import train as entry

    seen: list[tuple[bool, int]] = []
    fit = L.Trainer.fit

    def watched(self, *args, **kwargs):  # the state training starts in
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", watched)
    cfg = make_cfg(*QUICK, "trainer.max_epochs=1", "test=false")
    monkeypatch.setattr(entry, "_collection_held", True)  # as run() leaves it
    gc.disable()
    try:
        train(cfg)
    finally:
        gc.unfreeze()
        gc.enable()
    assert len(seen) == 1 and seen[0][0] is True and seen[0][1] > 10_000
