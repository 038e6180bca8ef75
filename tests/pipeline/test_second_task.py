"""A task from new files alone runs through train.py; checkpoint, test, report and export follow it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


# a sweep of two train.py jobs of a task defined in the tests' own files
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python train.py -m task=brightness optimizer.lr=...`: two jobs of a task cnnlab does not know."""
    out = tmp_path_factory.mktemp("brightness") / "sweep"
    args = [
        str(ROOT / "train.py"),
        "-m",
        f"hydra.searchpath=[file://{HERE / 'conf'}]",
        "task=brightness",
        "optimizer.lr=0.0003,0.03",
        "trainer.max_epochs=3",
        "logger=csv",
        f"hydra.sweep.dir={out}",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "trainer.accelerator=cpu",
        "export.formats=[torchscript]",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_best_checkpoint_is_the_lowest_validation_error(sweep: Path) -> None:
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["optimized_metric"] == "val/mae" and metrics["optimized_mode"] == "min"
        with (sweep / job / "csv" / "metrics.csv").open() as handle:
            maes = {int(r["epoch"]): float(r["val/mae"]) for r in csv.DictReader(handle) if r.get("val/mae")}
        best = torch.load(metrics["best_checkpoint"], weights_only=True)["epoch"]
        assert best == min(maes, key=maes.__getitem__)
        assert metrics["best/val/mae"] == pytest.approx(min(maes.values()))
        assert "test/mae" in metrics  # tested on the best checkpoint


def test_sweep_report_ranks_lower_first(sweep: Path) -> None:
    text = (sweep / "results.md").read_text()
    assert "best first by best/val/mae (lower is better)" in text
    summary = text.split("## Mean")[1]
    rows = [line for line in summary.splitlines() if line.startswith("| optimizer.lr=")]
    values = [float(row.split("|")[3]) for row in rows]
    assert len(values) == 2 and values == sorted(values)


def test_export_serves_the_task(sweep: Path) -> None:
    from cnnlab.serving import runtime
    from pipeline.brightness import brightness

    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    contract = json.loads((sweep / "0" / "export" / "model.json").read_text())
    assert contract["task"] == "brightness" and contract["serving"] == "pipeline.brightness"
    assert contract["output"] == {"brightness": "the predicted mean brightness (N,)"}
    assert metrics["export_files"] == {"torchscript": "model.pt"}, contract["formats"]
    model = runtime.load(metrics["export"])
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    predicted = model(images.float() / 255)["brightness"]
    assert predicted.shape == (4,) and torch.isfinite(predicted - brightness(images)).all()
    records = runtime.predict(model, list(images))
    assert [r["brightness"] for r in records] == pytest.approx(predicted.tolist(), abs=1e-5)
    assert contract["formats"]["torchscript"]["max_abs_diff"]["brightness"] < 1e-4
