"""Whether a training step waits for the GPU: each task's small recipe trained on CUDA with PyTorch's
synchronisation debug mode on during its training steps (``torch.cuda.set_sync_debug_mode("warn")``), counting
the calls that synchronised the host with the GPU, and where they were made.

    python scripts/sync_check.py [--jobs classification,segmentation,detection,anomaly] [--steps 30]
        [--skip 3] [--out DIR] [--device cuda]

Each job trains through ``cnnlab.train.train`` in this process (``trainer=gpu``, TensorBoard logging; no
progress bar, which reads the loss on the host at every step it shows) for ``--skip`` warm-up steps and
``--steps`` watched ones, with validation and checkpoints as a run has them. What is watched is the training
epoch's loop: each step (forward, loss, backward, optimiser step, the hooks), the fetching of the next batch
and Lightning's logging after it; not validation or the epoch's checkpoint. The divergence check's one read
every ``trainer.log_every_n_steps`` steps is among what it finds. Prints one line per job and the call sites
of what synchronised, most frequent first; ``--out`` writes them as JSON too. A GPU is needed: on a CPU there
is nothing to synchronise with, and ``--device cpu`` is a dry run of the same jobs and counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

import bench  # noqa: E402  (the bench's compose: the same configs as train.py)
from bench_metrics import SYNC_WARNING  # noqa: E402

#: the overrides of each job: a task's recipe, small enough for a minute on a GPU
JOBS: dict[str, list[str]] = {
    "classification": [],
    "segmentation": ["experiment=seg_shapes_unet", "data.train_size=256", "data.image_size=64"],
    "detection": ["experiment=det_shapes", "data.train_size=256"],
    "anomaly": ["experiment=ae_anomaly_digits"],
}


class SyncWatch(L.Callback):
    """The synchronisation debug mode on (on CUDA) from the first training batch after the first ``skip``
    steps to the end of the training epoch's batches: the steps, the fetching of batches between them and
    Lightning's bookkeeping and logging after each, not validation or the epoch's checkpoint."""

    def __init__(self, skip: int, cuda: bool) -> None:
        self.skip, self.cuda, self.watched, self.on = skip, cuda, 0, False

    def _switch(self, on: bool) -> None:
        if self.cuda and on != self.on:
            torch.cuda.set_sync_debug_mode("warn" if on else "default")
        self.on = on

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._switch(trainer.global_step >= self.skip)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.watched += self.on

    def on_validation_start(self, *args: Any) -> None:
        self._switch(False)

    def on_train_epoch_end(self, *args: Any) -> None:
        self._switch(False)

    def on_train_end(self, *args: Any) -> None:
        self._switch(False)


def summarise(job: str, caught: list[warnings.WarningMessage], steps: int) -> dict[str, Any]:
    """One job's findings: the steps watched, the synchronising calls and their call sites by count."""
    sites = Counter(f"{w.filename}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message))
    total = sum(sites.values())
    return {
        "job": job,
        "steps": steps,
        "syncs": total,
        "per_step": total / steps if steps else float("nan"),
        "sites": sites.most_common(),
    }


def check(job: str, steps: int, skip: int, device: str = "cuda") -> dict[str, Any]:
    """Train ``job`` on ``device`` with its training steps watched."""
    from cnnlab.train import train

    cuda = device == "cuda"
    where = ["trainer=gpu"] if cuda else ["trainer.accelerator=cpu"]
    overrides = [*JOBS[job], *where, "export=null", "test=false", *bench.QUIET]
    # as many epochs as the steps take (a small training set holds a few batches), validation between them
    overrides += [
        "trainer.max_epochs=1000",
        f"trainer.max_steps={steps + skip}",
        "trainer.enable_model_summary=false",
    ]
    cfg = bench.compose(overrides)
    watch = SyncWatch(skip, cuda)
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix=f"sync_{job}_")
    original = L.Trainer.__init__

    def with_watch(self: L.Trainer, *args: Any, callbacks: Any = None, **kwargs: Any) -> None:
        original(self, *args, callbacks=[*(callbacks or []), watch], **kwargs)

    L.Trainer.__init__ = with_watch  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(cfg)
    finally:
        L.Trainer.__init__ = original  # type: ignore[method-assign]
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    return summarise(job, caught, watch.watched)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left unwatched")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown or not jobs:
        parser.error(f"--jobs {','.join(unknown) or '(none)'}: choose from {', '.join(JOBS)}")
    if args.steps < 1 or args.skip < 0:
        parser.error("--steps: at least 1; --skip: at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("a CUDA GPU is needed (--device cpu: a dry run, where nothing can synchronise)")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "the CPU (a dry run)"
    print(f"sync check on {name}: {args.steps} training steps a job after {args.skip}")
    found = [check(job, args.steps, args.skip, args.device) for job in jobs]
    for result in found:
        print(
            f"{result['job']}: {result['syncs']} synchronising calls in {result['steps']} steps "
            f"({result['per_step']:.2f} a step)"
        )
        for site, count in result["sites"][:5]:
            print(f"  {count:5d}  {site}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sync_check.json").write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
