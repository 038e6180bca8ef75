"""Export and serving figures of every task and format: ``python scripts/bench_serving.py [--runs DIR ...]``.

For each task it trains a short offline recipe (or takes the run folders given), exports it to every format,
and measures: the export time, file size and largest difference to the checkpoint (from model.json), the
time to load each file, and the time per prediction (``cnnlab.serving.runtime.predict`` on one image, the
median of ``--repeats`` calls) at the training size and at a photo-like 480 x 640. Then the app's start-up:
from launching ``python -m cnnlab.app.server`` to its first answer on /health. Writes ``results.md`` and
``results.json`` into ``--out`` (default ``outputs/bench_serving/<date>``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "trainer.accelerator=cpu"]
#: a short offline run of each task: (name, overrides)
RECIPES = [
    ("classification (simple_cnn, digits)", ["trainer.max_epochs=5"]),
    ("classification (resnet, digits; CAM)", ["model=resnet", "trainer.max_epochs=3"]),
    ("autoencoder (denoise, digits)", ["experiment=ae_denoise_digits", "trainer.max_epochs=3"]),
    ("anomaly (digits)", ["experiment=ae_anomaly_digits", "trainer.max_epochs=3"]),
    (
        "segmentation (unet, shapes)",
        ["experiment=seg_shapes_unet", "data.train_size=96", "data.test_size=16", "trainer.max_epochs=3"],
    ),
    (
        "detection (fcos, shapes)",
        # a threshold that a short run's scores reach, so that the verification compares kept boxes
        ["experiment=det_shapes", "data.train_size=48", "data.test_size=8", "trainer.max_epochs=3"]
        + ["task.score_threshold=0.25"],
    ),
]


def train(overrides: list[str], folder: Path) -> Path:
    """One run of train.py into ``folder``."""
    command = [sys.executable, str(ROOT / "train.py"), *overrides, *QUIET, f"hydra.run.dir={folder}"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    return folder


def time_predictions(path: Path, repeats: int) -> dict[str, float]:
    """Load time and median time per prediction of one exported file, at two image sizes."""
    from cnnlab.serving import runtime

    start = time.perf_counter()
    model = runtime.load(path)
    figures = {"load_s": time.perf_counter() - start}
    side = int(model.contract["image_size"])
    generator = torch.Generator().manual_seed(0)
    for name, (height, width) in (("train_size", (side, side)), ("480x640", (480, 640))):
        image = torch.randint(
            0, 256, (model.in_channels, height, width), dtype=torch.uint8, generator=generator
        )
        runtime.predict(model, [image])  # warm-up: first calls allocate and compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runtime.predict(model, [image])
            times.append(time.perf_counter() - start)
        figures[f"predict_ms_{name}"] = 1000 * statistics.median(times)
    return figures


def app_start_up(export: Path) -> float:
    """Seconds from launching the app on ``export`` to its first answer on /health."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    command = [sys.executable, "-m", "cnnlab.app.server", str(export), "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the app did not answer within 120 s")
    finally:
        server.terminate()
        server.wait(timeout=30)


def table(rows: list[dict]) -> str:
    """The figures as a Markdown table, one row per task and format."""
    head = "| task | format | file | export s | load s | predict ms (train size) | (480x640) | max diff |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['format']} | not written: {r['error'][:80]} | | | | | |")
            continue
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in r["max_abs_diff"].items())
        lines.append(
            f"| {r['task']} | {r['format']} | {r['bytes'] / 1e6:.2f} MB | {r['export_seconds']:.1f} | "
            f"{r['load_s']:.2f} | {r['predict_ms_train_size']:.1f} | {r['predict_ms_480x640']:.1f} | "
            f"{diffs} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="*", help="run folders with an export/ (default: train)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    out = args.out or ROOT / "outputs" / "bench_serving" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    named = [(run.name, run) for run in args.runs or []]
    if not named:
        for index, (name, overrides) in enumerate(RECIPES):
            print(f"training {name} ...", flush=True)
            named.append((name, train(overrides, out / f"run{index}")))
    rows = []
    for task, run in named:
        described = json.loads((run / "export" / "model.json").read_text())
        for fmt, info in described["formats"].items():
            row = {"task": task, "format": fmt, **info}
            if "error" not in info:
                row.update(time_predictions(run / "export" / info["file"], args.repeats))
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    first = named[0][1] / "export"
    start_up = app_start_up(first)
    threads = torch.get_num_threads()
    text = (
        f"# Export and serving on {os.cpu_count()} CPU cores ({threads} torch threads), "
        f"torch {torch.__version__}\n\n"
        + table(rows)
        + f"\n\nApp start-up (launch to first /health answer) on {first}: {start_up:.2f} s\n"
    )
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"rows": rows, "app_start_up_s": start_up}, indent=2) + "\n")
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
