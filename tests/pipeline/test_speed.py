"""What makes runs fast without changing what they compute: one checkpoint write, compile, channels-last."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from cnnlab.config import ConfigError
from cnnlab.train import MALLOC_VARIABLES, build, keep_freed_memory, train

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


# 32 MiB in blocks of 64 KiB, which glibc serves from its heap: touched, freed, then allocated and touched
# again; prints whether the thresholds were set and the page faults of the second pass
FAULTS = """
import ctypes, resource, sys
from cnnlab.train import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def touched():
    blocks = [libc.malloc(64 << 10) for _ in range(512)]
    for block in blocks:
        ctypes.memset(block, 1, 64 << 10)
    return blocks
for block in touched():
    libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
blocks = touched()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def freed_memory_faults(how: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if k not in MALLOC_VARIABLES}
    command = [sys.executable, "-c", FAULTS, how]
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kept, faults = done.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_freed_memory_serves_the_next_allocations_without_new_page_faults() -> None:
    # glibc as it starts hands the freed heap back to the system: the second pass faults in every page again
    assert freed_memory_faults("plain")[1] > 4000
    kept, faults = freed_memory_faults("keep")
    assert kept == "True" and faults < 500


@pytest.mark.parametrize("variable", MALLOC_VARIABLES)
def test_an_allocator_setting_of_the_users_own_is_kept(monkeypatch, variable: str) -> None:
    monkeypatch.setenv(variable, "131072" if variable.startswith("MALLOC") else "libjemalloc.so.2")
    assert keep_freed_memory() is False


def test_every_job_keeps_freed_memory_before_it_starts(monkeypatch, make_cfg) -> None:
    # the function Hydra's launchers call for each job (a Ray or Slurm worker's too), as they call it
    from cnnlab import train as entry

    calls: list[str] = []
    monkeypatch.setattr(entry, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(entry, "run_task", lambda cfg: calls.append("ran") or 0.5)
    assert entry._hydra_main.__wrapped__(make_cfg()) == 0.5
    assert calls == ["kept", "ran"]
