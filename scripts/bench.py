"""cnnlab against a plain PyTorch loop doing the same work: ``python scripts/bench.py`` (``make bench``).

Each job runs through ``python train.py`` (a process of its own, as a user runs it) and as a plain loop in
this process (same network, optimiser, schedule, batch size and epochs, validation every epoch, a test at
the end), alternating, ``--repeats`` times. It prints the images/s of each, their ratio, and the phase table
of a whole run: start (interpreter, imports and Hydra), config, data, fit, test, export and exit, beside the
floor that ``python -c "import torch, lightning"`` sets. Jobs:

- ``digits``: the default job (``make train``: simple_cnn on the embedded digits at 16 px, 15 epochs);
- ``folder``: a CIFAR-sized folder of 5,000 JPEG files of 32 px in 10 class folders (generated once), through
  ``data=image_folder``, in memory (the default) and through the DataLoader (``data.in_memory=false``).

Writes ``results.md`` and ``results.json`` into ``--out`` (default ``outputs/bench/<date>``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
#: what both sides leave out: the console output of a run is not what is measured
QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "trainer.accelerator=cpu"]
PHASES = ("start", "config", "data", "fit", "test", "export", "exit")


def run_cnnlab(overrides: list[str], folder: Path) -> dict[str, Any]:
    """One ``python train.py`` run into ``folder``: its wall time, phases and metrics."""
    command = [sys.executable, str(ROOT / "train.py"), *overrides, *QUIET, f"hydra.run.dir={folder}"]
    launched = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    finished = time.time()
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    record = json.loads((folder / "metrics.json").read_text())
    seconds = record["seconds"]
    phases = {
        "start": seconds["began"] - launched,
        **{name: seconds.get(name, 0.0) for name in ("config", "data", "fit", "test", "export")},
        "exit": finished - seconds["ended"],
    }
    return {"wall": finished - launched, "phases": phases, "metrics": record}


def import_floor() -> float:
    """Seconds that ``python -c "import torch, lightning"`` takes."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, lightning"], check=True)
    return time.perf_counter() - start


# --- the plain loop ---------------------------------------------------------------------------------------


def compose(overrides: list[str]) -> Any:
    """The run's config, for the plain loop to build the same network and optimiser."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cnnlab import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def plain_fit(cfg: Any, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], epochs: int) -> dict[str, Any]:
    """Train ``cfg``'s network on float tensors with a hand-written loop; seconds and test accuracy."""
    from hydra.utils import instantiate

    torch.manual_seed(int(cfg.seed))
    net = instantiate(cfg.model)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=float(cfg.optimizer.lr), weight_decay=float(cfg.optimizer.weight_decay)
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    batch = int(cfg.data.batch_size)
    (x, y), (vx, vy), (tx, ty) = splits["train"], splits["val"], splits["test"]
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x) - batch + 1, batch):  # drop_last, as cnnlab's training batches
            pick = order[i : i + batch]
            loss = F.cross_entropy(net(x[pick]), y[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        evaluate(net, vx, vy, batch)
    fit = time.perf_counter() - start
    return {"fit": fit, "test_acc": evaluate(net, tx, ty, batch), "train_images": len(x)}


@torch.no_grad()
def evaluate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Accuracy of ``net`` on (x, y)."""
    net.eval()
    correct = sum(
        int((net(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return correct / len(x)


def normalised(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) as float at ``size`` px, normalised by their own mean and std."""
    x = images.float().div(255)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / std


def split(images: torch.Tensor, labels: torch.Tensor, test: int, val: int) -> dict[str, Any]:
    """Seeded train, val and test tensors of the given sizes."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    parts = {"test": order[:test], "val": order[test : test + val], "train": order[test + val :]}
    return {name: (images[idx], labels[idx]) for name, idx in parts.items()}


# --- jobs -------------------------------------------------------------------------------------------------


def digits_data() -> tuple[dict[str, Any], float]:
    """The digits at 16 px as cnnlab splits them (1,294 train, 143 val, 360 test images)."""
    from sklearn.datasets import load_digits

    start = time.perf_counter()
    digits = load_digits()
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    data = split(normalised(images, 16), labels, test=359, val=144)
    return data, time.perf_counter() - start


def make_folder(root: Path, count: int = 5000, size: int = 32) -> Path:
    """``count`` JPEG files of ``size`` px in 10 class folders, 80% under train/ and 20% under test/."""
    from PIL import Image

    if (root / "done").is_file():
        return root
    generator = torch.Generator().manual_seed(0)
    colours = torch.rand(10, 3, 1, 1, generator=generator)
    for i in range(count):
        label = i % 10
        noise = torch.rand(3, size, size, generator=generator)
        image = (0.6 * colours[label] + 0.4 * noise).mul(255).byte().permute(1, 2, 0).numpy()
        folder = root / ("test" if (i // 10) % 5 == 0 else "train") / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)
    (root / "done").write_text("")
    return root


def folder_data(root: Path) -> tuple[dict[str, Any], float]:
    """Every file of the folder decoded once into tensors, as a plain loop would hold them."""
    from PIL import Image

    start = time.perf_counter()
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for part in ("train", "test"):
        files = sorted((root / part).glob("*/*.jpg"))
        arrays = [torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files]
        images = torch.stack(arrays).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor([int(f.parent.name.split("_")[1]) for f in files])
        tensors[part] = (images, labels)
    decode = time.perf_counter() - start
    train_images, train_labels = tensors["train"]
    n_val = round(len(train_images) * 0.1)
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))
    x = normalised(torch.cat([train_images, tensors["test"][0]]), 32)
    xt, xr = x[len(train_images) :], x[: len(train_images)]
    data = {
        "train": (xr[order[n_val:]], train_labels[order[n_val:]]),
        "val": (xr[order[:n_val]], train_labels[order[:n_val]]),
        "test": (xt, tensors["test"][1]),
    }
    return data, decode


JOBS: dict[str, dict[str, Any]] = {
    "digits": {"overrides": [], "epochs": 15},
    "folder": {
        "overrides": [
            "data=image_folder",
            "data.num_classes=10",
            "data.image_size=32",
            "trainer.max_epochs=2",
        ]
        + ["export=null"],
        "epochs": 2,
        "variants": {"in memory": [], "DataLoader": ["data.in_memory=false"]},
    },
}


def bench_job(name: str, out: Path, repeats: int) -> dict[str, Any]:
    """Alternate the plain loop and cnnlab's run(s) of one job; every measurement kept."""
    job = JOBS[name]
    overrides = list(job["overrides"])
    if name == "folder":
        root = make_folder((out.parent / "data" / "folder_5000").resolve())
        overrides.append(f"data.root={root}")
        data, decode = folder_data(root)
    else:
        data, decode = digits_data()
    cfg = compose(overrides)
    variants = job.get("variants", {"cnnlab": []})
    result: dict[str, Any] = {"plain": [], "floor": [], "decode": decode, **{v: [] for v in variants}}
    for r in range(repeats):
        result["floor"].append(import_floor())
        result["plain"].append(plain_fit(cfg, data, int(job["epochs"])))
        for variant, extra in variants.items():
            folder = out / "runs" / f"{name}_{variant.replace(' ', '_')}_{r}"
            result[variant].append(run_cnnlab(overrides + extra, folder))
            print(
                f"bench: {name} {variant} run {r + 1}/{repeats}: {result[variant][-1]['wall']:.1f} s",
                flush=True,
            )
    result["train_images"] = result["plain"][0]["train_images"]
    result["epochs"] = int(job["epochs"])
    return result


def summary(name: str, result: dict[str, Any]) -> list[str]:
    """The job's Markdown lines: images/s and ratios, then the phase table."""
    images = result["train_images"] * result["epochs"]
    plain_fit_s = statistics.median(p["fit"] for p in result["plain"])
    floor = statistics.median(result["floor"])
    plain_ips = images / plain_fit_s
    lines = [
        f"## {name}",
        "",
        f"{result['train_images']} training images x {result['epochs']} epochs; medians of "
        f"{len(result['plain'])} alternating runs. Plain loop: fit {plain_fit_s:.2f} s ({plain_ips:,.0f} "
        f"images/s), test accuracy {statistics.median(p['test_acc'] for p in result['plain']):.4f}; "
        f"`import torch, lightning` {floor:.2f} s; decoding the data once {result['decode']:.2f} s.",
        "",
        "| run | fit s | images/s | x plain | epoch s | whole run s | x (import + plain fit) | test acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    variants = [k for k in result if isinstance(result[k], list) and k not in ("plain", "floor")]
    for variant in variants:
        runs = result[variant]
        fit = statistics.median(r["phases"]["fit"] for r in runs)
        wall = statistics.median(r["wall"] for r in runs)
        acc = statistics.median(r["metrics"].get("test/acc", math.nan) for r in runs)
        lines.append(
            f"| {variant} | {fit:.2f} | {images / fit:,.0f} | {plain_fit_s / fit:.2f} | "
            f"{fit / result['epochs']:.2f} | {wall:.2f} | {wall / (floor + plain_fit_s):.2f} | {acc:.4f} |"
        )
    lines += ["", "| run | " + " | ".join(PHASES) + " | total |", "|---|" + "---|" * (len(PHASES) + 1)]
    for variant in variants:
        runs = result[variant]
        cells = [statistics.median(r["phases"][p] for r in runs) for p in PHASES]
        total = statistics.median(r["wall"] for r in runs)
        lines.append(f"| {variant} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {total:.2f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="digits,folder", help=f"comma-separated, of {', '.join(JOBS)}")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/bench/<date>")
    args = parser.parse_args(argv)
    unknown = [j for j in args.jobs.split(",") if j not in JOBS]
    if unknown:
        parser.error(f"unknown job(s) {', '.join(unknown)}: choose from {', '.join(JOBS)}")
    out = args.out or ROOT / "outputs" / "bench" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    results = {name: bench_job(name, out, args.repeats) for name in args.jobs.split(",")}
    device = f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [f"# cnnlab against a plain PyTorch loop ({datetime.now():%Y-%m-%d %H:%M}; {device})", ""]
    for name, result in results.items():
        lines += summary(name, result)
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(lines))
    print(f"bench: written to {out}")


if __name__ == "__main__":
    main()
