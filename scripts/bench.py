"""cnnlab against a plain PyTorch loop doing the same work: ``python scripts/bench.py`` (``make bench``).

Each job runs through ``python train.py`` and as a plain loop (same network, optimiser, schedule, batch size
and epochs, validation every epoch, a test at the end), each in a process of its own as a user runs them,
alternating, ``--repeats`` times: one process on a machine runs the same loop up to 1.5x faster than the
next, so both sides sample fresh processes. It prints the images/s of each, their ratio, and the phase table
of a whole run: start (interpreter, imports and Hydra), config, data, fit, test, export and exit, beside the
floor that ``python -c "import torch, lightning"`` sets. Jobs:

- ``digits``: the default job (``make train``: simple_cnn on the embedded digits at 16 px, 15 epochs);
- ``folder``: a CIFAR-sized folder of 5,000 JPEG files of 32 px in 10 class folders (generated once), through
  ``data=image_folder``, in memory (the default) and through the DataLoader (``data.in_memory=false``);
- ``photos``: 600 JPEG photos of 256 px trained at 64 px through the DataLoader, from the decoded cache (the
  default) and decoded per sample (``data.decoded_cache=false``);
- on a GPU (``--device cuda``): ``resnet18_224`` and ``resnet50_224`` (ResNets at 224 px on a generated
  folder of 2,000 photos) and ``cifar_resnet`` (a small-input ResNet-18 at 32 px on the 5,000-file folder),
  both sides in bf16 autocast (``trainer=gpu``) and channels-last.

``--baseline DIR`` runs another checkout of cnnlab (``git worktree add DIR <commit>``) as a third side, in
the same alternation: before and after measured in one run. Writes ``results.md`` and ``results.json`` into
``--out`` (default ``outputs/bench/<date>``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
#: what both sides leave out: the console output of a run is not what is measured
QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null"]
PHASES = ("start", "config", "data", "fit", "test", "export", "exit")


def run_cnnlab(overrides: list[str], folder: Path, checkout: Path = ROOT) -> dict[str, Any]:
    """One ``python train.py`` run of ``checkout`` into ``folder``: its wall time, phases and metrics."""
    command = [sys.executable, str(checkout / "train.py"), *overrides, *QUIET, f"hydra.run.dir={folder}"]
    # the checkout's own package first (this environment's cnnlab is an editable install of this one)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(checkout / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    launched, faults = time.time(), child_faults()
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, env=env)
    finished, faults = time.time(), child_faults() - faults
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    record = json.loads((folder / "metrics.json").read_text())
    seconds = record.get("seconds")
    if seconds is None:  # a checkout older than the phase timer: the whole run only
        return {
            "wall": finished - launched,
            "phases": {p: math.nan for p in PHASES},
            "metrics": record,
            "faults": faults,
        }
    phases = {
        "start": seconds["began"] - launched,
        **{name: seconds.get(name, 0.0) for name in ("config", "data", "fit", "test", "export")},
        "exit": finished - seconds["ended"],
    }
    return {"wall": finished - launched, "phases": phases, "metrics": record, "faults": faults}


def child_faults() -> int:
    """The minor page faults of this process's ended children so far: a run's is the difference around it
    (a run whose memory goes back to the system every step makes several times more, and is slower)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt


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


def plain_fit(
    cfg: Any, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], epochs: int, device: str = "cpu"
) -> dict[str, Any]:
    """Train ``cfg``'s network on float tensors with a hand-written loop; seconds and test accuracy. On a GPU
    the tensors live there, the loop runs in bf16 autocast and channels-last, as cnnlab's ``trainer=gpu``."""
    from hydra.utils import instantiate

    torch.manual_seed(int(cfg.seed))
    net = instantiate(cfg.model).to(device)
    gpu = device.startswith("cuda")
    if gpu:
        net = net.to(memory_format=torch.channels_last)
        splits = {k: (x.to(device), y.to(device)) for k, (x, y) in splits.items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else nullcontext()
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=float(cfg.optimizer.lr), weight_decay=float(cfg.optimizer.weight_decay)
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    batch = int(cfg.data.batch_size)
    (x, y), (vx, vy), (tx, ty) = splits["train"], splits["val"], splits["test"]
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x), device=x.device)
        for i in range(0, len(x) - batch + 1, batch):  # drop_last, as cnnlab's training batches
            pick = order[i : i + batch]
            with autocast:
                loss = F.cross_entropy(net(x[pick]), y[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        evaluate(net, vx, vy, batch, autocast)
    sync()
    fit = time.perf_counter() - start
    return {"fit": fit, "test_acc": evaluate(net, tx, ty, batch, autocast), "train_images": len(x)}


@torch.no_grad()
def evaluate(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, autocast: Any = None
) -> float:
    """Accuracy of ``net`` on (x, y)."""
    net.eval()
    with autocast or nullcontext():
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


def folder_data(root: Path, size: int = 32) -> tuple[dict[str, Any], float]:
    """Every file of the folder decoded once into tensors at ``size`` px, as a plain loop would hold them."""
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
    x = normalised(torch.cat([train_images, tensors["test"][0]]), size)
    xt, xr = x[len(train_images) :], x[: len(train_images)]
    data = {
        "train": (xr[order[n_val:]], train_labels[order[n_val:]]),
        "val": (xr[order[:n_val]], train_labels[order[:n_val]]),
        "test": (xt, tensors["test"][1]),
    }
    return data, decode


FOLDER = ["data=image_folder", "data.num_classes=10", "export=null"]
#: a GPU job: bf16 autocast and channels-last on both sides, AdamW and cosine as the plain loop
GPU = ["trainer=gpu", "optimizer=adamw", "scheduler=cosine"]
JOBS: dict[str, dict[str, Any]] = {
    "digits": {"overrides": [], "epochs": 15},
    "folder": {
        "overrides": [*FOLDER, "data.image_size=32", "trainer.max_epochs=2"],
        "epochs": 2,
        "folder": (5000, 32),
        "variants": {"in memory": [], "DataLoader": ["data.in_memory=false"]},
    },
    # photos larger than the training size on the DataLoader path: decoded once (the cache) or every epoch
    "photos": {
        "overrides": [*FOLDER, "data.image_size=64", "data.in_memory=false", "trainer.max_epochs=3"],
        "epochs": 3,
        "folder": (600, 256),
        "variants": {"decoded cache": [], "decoded per sample": ["data.decoded_cache=false"]},
    },
    "resnet18_224": {
        "overrides": [*FOLDER, *GPU, "data.image_size=224", "model=resnet", "data.batch_size=128"]
        + ["trainer.max_epochs=3"],
        "epochs": 3,
        "folder": (2000, 224),
        "gpu": True,
    },
    "resnet50_224": {
        "overrides": [*FOLDER, *GPU, "data.image_size=224", "model=resnet", "model.arch=resnet50"]
        + ["data.batch_size=64", "trainer.max_epochs=2"],
        "epochs": 2,
        "folder": (2000, 224),
        "gpu": True,
    },
    "cifar_resnet": {
        "overrides": [*FOLDER, *GPU, "data.image_size=32", "model=resnet", "data.batch_size=512"]
        + ["trainer.max_epochs=5"],
        "epochs": 5,
        "folder": (5000, 32),
        "gpu": True,
    },
}


def job_overrides(name: str, out: Path, device: str) -> list[str]:
    """The job's overrides of the run's config on ``device`` (its generated folder written once)."""
    job = JOBS[name]
    overrides = list(job["overrides"])
    if not device.startswith("cuda"):  # a GPU job on the CPU: the same work in full precision
        overrides = [o for o in overrides if o != "trainer=gpu"] + ["trainer.accelerator=cpu"]
    if "folder" in job:
        count, size = job["folder"]
        root = make_folder((out.parent / "data" / f"folder_{count}_{size}px").resolve(), count, size)
        overrides.append(f"data.root={root}")
    return overrides


def plain_job(name: str, out: Path, device: str) -> dict[str, Any]:
    """The plain loop of one job, in this process: its data read, then trained and tested."""
    overrides = job_overrides(name, out, device)
    cfg = compose(overrides)
    # the plain loop trains at the run's size, which may be below the files' size
    if "folder" in JOBS[name]:
        root = Path(next(o for o in overrides if o.startswith("data.root=")).split("=", 1)[1])
        data, decode = folder_data(root, int(cfg.data.image_size))
    else:
        data, decode = digits_data()
    return {**plain_fit(cfg, data, int(JOBS[name]["epochs"]), device), "decode": decode}


def run_plain(name: str, out: Path, device: str) -> dict[str, Any]:
    """The plain loop in a process of its own, as cnnlab's run is: the speed of one process on this
    machine varies by more than the difference measured (the same loop: 3.9 s in one, 5.7 s in another),
    so each side samples fresh processes alike."""
    command = [sys.executable, __file__, "--plain-loop", name, "--out", str(out), "--device", device]
    faults = child_faults()
    done = subprocess.run(command, capture_output=True, text=True)
    faults = child_faults() - faults
    if done.returncode != 0:
        raise SystemExit(f"bench: the plain loop of {name} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "faults": faults}


def bench_job(
    name: str, out: Path, repeats: int, device: str = "cpu", baseline: Path | None = None
) -> dict[str, Any]:
    """Alternate the plain loop and cnnlab's run(s) of one job (and the baseline checkout's), each a
    process of its own; every measurement kept."""
    job = JOBS[name]
    overrides = job_overrides(name, out, device)
    variants = {name: (extra, ROOT) for name, extra in job.get("variants", {"cnnlab": []}).items()}
    if baseline is not None:
        variants.update({f"baseline {v}": (extra, baseline) for v, (extra, _) in list(variants.items())})
    result: dict[str, Any] = {"plain": [], "floor": [], **{v: [] for v in variants}}
    for r in range(repeats):
        result["floor"].append(import_floor())
        result["plain"].append(run_plain(name, out, device))
        fit = result["plain"][-1]["fit"]
        print(f"bench: {name} plain loop run {r + 1}/{repeats}: fit {fit:.1f} s", flush=True)
        for variant, (extra, checkout) in variants.items():
            folder = out / "runs" / f"{name}_{variant.replace(' ', '_')}_{r}"
            try:
                result[variant].append(run_cnnlab(overrides + extra, folder, checkout))
            except SystemExit as err:
                if checkout == ROOT:
                    raise
                # an older checkout may lack an option the variant sets: reported, the others measured
                print(f"bench: {name} {variant} run {r + 1}/{repeats} failed: {str(err)[-300:]}", flush=True)
                continue
            print(
                f"bench: {name} {variant} run {r + 1}/{repeats}: {result[variant][-1]['wall']:.1f} s",
                flush=True,
            )
    for variant in [v for v in variants if not result[v]]:
        del result[variant]
    result["decode"] = statistics.median(p["decode"] for p in result["plain"])
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
        f"`import torch, lightning` {floor:.2f} s; decoding the data once {result['decode']:.2f} s; "
        f"{faults(result['plain'])} page faults a process.",
        "",
        "| run | fit s | images/s | x plain | epoch s | whole run s | x (import + plain fit) | test acc "
        "| page faults |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    variants = [k for k in result if isinstance(result[k], list) and k not in ("plain", "floor")]
    for variant in variants:
        runs = result[variant]
        fit = statistics.median(r["phases"]["fit"] for r in runs)
        wall = statistics.median(r["wall"] for r in runs)
        acc = statistics.median(r["metrics"].get("test/acc", math.nan) for r in runs)
        lines.append(
            f"| {variant} | {fit:.2f} | {images / fit:,.0f} | {plain_fit_s / fit:.2f} | "
            f"{fit / result['epochs']:.2f} | {wall:.2f} | {wall / (floor + plain_fit_s):.2f} | {acc:.4f} | "
            f"{faults(runs)} |"
        )
    lines += ["", "| run | " + " | ".join(PHASES) + " | total |", "|---|" + "---|" * (len(PHASES) + 1)]
    for variant in variants:
        runs = result[variant]
        cells = [statistics.median(r["phases"][p] for r in runs) for p in PHASES]
        total = statistics.median(r["wall"] for r in runs)
        lines.append(f"| {variant} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {total:.2f} |")
    return lines + [""]


def faults(runs: list[dict[str, Any]]) -> str:
    """The median of the runs' minor page faults, or "?" for results written before they were counted."""
    counts = [r["faults"] for r in runs if "faults" in r]
    return f"{statistics.median(counts) / 1000:,.0f}k" if counts else "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="digits,folder", help=f"comma-separated, of {', '.join(JOBS)}")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/bench/<date>")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU jobs (bf16, channels-last)")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout of cnnlab, run alternately as a third side",
    )
    # what each repeat runs in a process of its own: one job's plain loop, its figures as JSON on stdout
    parser.add_argument("--plain-loop", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_loop is not None:
        torch.set_num_threads(torch.get_num_threads())
        print(json.dumps(plain_job(args.plain_loop, args.out, args.device)))
        return
    unknown = [j for j in args.jobs.split(",") if j not in JOBS]
    if unknown:
        parser.error(f"unknown job(s) {', '.join(unknown)}: choose from {', '.join(JOBS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch here")
    if args.baseline is not None and not (args.baseline / "train.py").is_file():
        parser.error(f"--baseline {args.baseline}: no train.py there (make one with git worktree add)")
    out = args.out or ROOT / "outputs" / "bench" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    results = {
        name: bench_job(name, out, args.repeats, args.device, args.baseline) for name in args.jobs.split(",")
    }
    device = f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        device = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    if args.baseline is not None:
        device += f"; baseline: {args.baseline}"
    lines = [f"# cnnlab against a plain PyTorch loop ({datetime.now():%Y-%m-%d %H:%M}; {device})", ""]
    for name, result in results.items():
        lines += summary(name, result)
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(lines))
    print(f"bench: written to {out}")


if __name__ == "__main__":
    main()
