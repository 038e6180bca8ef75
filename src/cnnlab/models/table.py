"""cnnlab-models: the architecture comparison table of every image classifier among the ``model=`` options.

One row per option (``conf/model/*.yaml`` whose network returns class scores), built as its config builds it
for ``--size`` px RGB images and ``--classes`` classes, with random weights (``weights`` forced to null, so
nothing is downloaded): parameters, GMACs of one image (``FlopCounterMode`` FLOPs / 2, which is what
torchvision's ``meta["_ops"]`` records as GFLOPs), depth in stages, the ImageNet top-1 and file size that the
installed torchvision records for the option's weights (``DEFAULT``), the paper and its year, and the
throughput measured here: eval-mode forward under ``torch.inference_mode`` and train-mode forward + backward.

Detectors, segmenters and autoencoders are left out: their cost depends on their own resizing and targets,
their torchvision metadata reports COCO or VOC figures, not ImageNet top-1, so no column would compare.
"""

from __future__ import annotations

import argparse
import csv
import gc
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from cnnlab import CONF_DIR
from cnnlab.config import options
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.models.base import Classifier
from cnnlab.models.weights import torchvision_weights

#: the table's columns, in order: what ``--sort`` takes
COLUMNS = (
    "model",
    "arch",
    "params",
    "gmacs",
    "stages",
    "top1",
    "weights_mb",
    "tv_weights",
    "year",
    "paper",
    "eval_img_s",
    "train_img_s",
    "note",
)
#: torchvision's weights for each architecture that has them, as the table reports them
TV_WEIGHTS = "DEFAULT"
#: timed repeats stop here even when the time budget is not spent (small, fast networks)
MAX_REPEATS = 50
#: speed is measured only where weights and gradients (float32) fit in this share of the free memory
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Paper:
    """Where an architecture was published: title, authors and year of first publication (arXiv)."""

    title: str
    authors: str
    year: int | None = None

    def __str__(self) -> str:
        return f"{self.authors}, {self.title}" if self.authors else self.title


#: by torchvision builder prefix (the longest that fits wins) or, for cnnlab's own networks, by class name
PAPERS = {
    "LeNet5": Paper("Gradient-Based Learning Applied to Document Recognition", "LeCun et al.", 1998),
    "alexnet": Paper(
        "ImageNet Classification with Deep Convolutional Neural Networks", "Krizhevsky et al.", 2012
    ),
    "vgg": Paper(
        "Very Deep Convolutional Networks for Large-Scale Image Recognition", "Simonyan, Zisserman", 2014
    ),
    "googlenet": Paper("Going Deeper with Convolutions (Inception v1)", "Szegedy et al.", 2014),
    "inception_v3": Paper(
        "Rethinking the Inception Architecture for Computer Vision", "Szegedy et al.", 2015
    ),
    "resnet": Paper("Deep Residual Learning for Image Recognition", "He et al.", 2015),
    "CapsNet": Paper("Dynamic Routing Between Capsules", "Sabour et al.", 2017),
    "mobilenet_v3": Paper("Searching for MobileNetV3", "Howard et al.", 2019),
    "efficientnet": Paper("EfficientNet: Rethinking Model Scaling for CNNs", "Tan, Le", 2019),
    "efficientnet_v2": Paper("EfficientNetV2: Smaller Models and Faster Training", "Tan, Le", 2021),
    "convnext": Paper("A ConvNet for the 2020s", "Liu et al.", 2022),
    "MLP": Paper("cnnlab's own: the course's multi-layer perceptron", ""),
    "SimpleCNN": Paper("cnnlab's own: the course's from-scratch CNN", ""),
}


def paper_of(net: Classifier) -> Paper | None:
    """The paper of ``net``'s architecture: by its torchvision builder, else by its class."""
    arch = net.torchvision_arch or ""
    prefixes = [key for key in PAPERS if arch.startswith(key)]
    return PAPERS[max(prefixes, key=len)] if prefixes else PAPERS.get(type(net).__name__)


def classifier_options() -> list[str]:
    """The ``model=`` options whose network returns class scores."""
    return options("model", lambda cls: getattr(cls, "output", None) == "scores")


def pick_models(names: Sequence[str] | None) -> list[str]:
    """The options to tabulate: ``names`` (checked) or every classifier."""
    valid = classifier_options()
    wrong = [n for n in names or [] if n not in valid]
    if wrong:
        raise ConfigError(
            f"--models {','.join(wrong)}: not an image classifier among the model options; choose from "
            f"{', '.join(valid)} (detectors, segmenters and autoencoders have no row in this table)"
        )
    return list(names) if names else valid


def model_config(option: str, size: int, classes: int) -> dict[str, Any]:
    """``conf/model/<option>.yaml`` resolved for ``size`` px RGB images, ``classes`` classes, no weights."""
    data = {"num_classes": classes, "in_channels": 3, "image_size": size}
    cfg = OmegaConf.merge({"data": data}, {"model": OmegaConf.load(CONF_DIR / "model" / f"{option}.yaml")})
    model = OmegaConf.to_container(cfg.model, resolve=True)
    # random weights: a pretrained name in a config would mean a download, impossible offline
    for key in ("weights", "weights_backbone"):
        if key in model:
            model[key] = None
    return model


def build(option: str, size: int, classes: int, device: str | torch.device) -> Classifier:
    """The network of ``model=<option>`` on ``device`` (``meta``: shapes only, instant), in eval mode."""
    with torch.device(device):
        return instantiate(model_config(option, size, classes)).eval()


def count_macs(net: Classifier, size: int, device: str | torch.device) -> float:
    """Multiply-accumulates of one ``size`` px image, in billions: FlopCounterMode's FLOPs / 2."""
    image = torch.zeros(1, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(image)
    return counter.get_total_flops() / 2e9


def throughput(
    net: Classifier, batch: int, size: int, device: torch.device, train: bool, seconds: float
) -> float:
    """Images per second: one warm-up step, then timed steps until ``seconds`` are spent (at least one)."""
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    net.train(train)

    def step() -> None:
        if train:
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(images), labels).backward()
        else:
            with torch.inference_mode():
                net(images)

    step()
    _sync(device)
    repeats, start = 0, time.perf_counter()
    while True:
        step()
        _sync(device)
        repeats += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or repeats >= MAX_REPEATS:
            return batch * repeats / elapsed


def _sync(device: torch.device) -> None:
    # CUDA runs asynchronously: a step has taken its time only once the device has finished it
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torchvision_meta(arch: str | None) -> tuple[str, dict[str, Any]]:
    """The name and metadata of torchvision's ``DEFAULT`` weights for ``arch`` (empty without any)."""
    if not arch:
        return "", {}
    weights = torchvision_weights(arch, TV_WEIGHTS)
    return weights.name, dict(weights.meta, crop_size=getattr(weights.transforms(), "crop_size", None))


def describe(option: str, size: int, classes: int) -> dict[str, Any]:
    """A row without speed: what the config builds and what torchvision records about it."""
    net = _build_cheaply(option, size, classes)
    name, meta = torchvision_meta(net.torchvision_arch)
    paper = paper_of(net)
    row: dict[str, Any] = {
        "model": option,
        "arch": net.torchvision_arch or type(net).__name__,
        "params": sum(p.numel() for p in net.parameters()),
        "gmacs": count_macs(net, size, next(net.parameters()).device),
        "stages": len(net.stages),
        "top1": meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
        "weights_mb": meta.get("_file_size"),
        "tv_weights": name,
        "year": paper.year if paper else None,
        "paper": str(paper) if paper else "",
    }
    row["note"] = "; ".join(_notes(row, meta, size, classes, getattr(net, "native_size", None)))
    return row


def _build_cheaply(option: str, size: int, classes: int) -> Classifier:
    # on the meta device nothing is allocated or initialised (VGG's 133 M parameters take seconds on a CPU);
    # a network whose construction reads tensor values is built on the CPU instead
    try:
        return build(option, size, classes, "meta")
    except (NotImplementedError, RuntimeError):
        return build(option, size, classes, "cpu")


def _notes(
    row: dict[str, Any], meta: dict[str, Any], size: int, classes: int, native: int | None
) -> list[str]:
    """Where the row and torchvision's metadata describe different things, or the network another size."""
    notes = []
    if native and native != size:
        notes.append(f"designed for {native} px images: its capsules and their weights grow with the image")
    recorded = meta.get("num_params")
    if recorded and classes == len(meta.get("categories") or []) and recorded != row["params"]:
        notes.append(f"torchvision records {recorded:,} parameters for its {row['tv_weights']} weights")
    crop = meta.get("crop_size")
    if crop and crop[0] != size and row["top1"] is not None:
        notes.append(f"top-1 measured at {crop[0]} px")
    return notes


def too_big(params: int, device: torch.device) -> str:
    """Why ``params`` float32 weights and their gradients cannot be timed on ``device`` ('' when they can)."""
    free = free_memory(device)
    needed = 2 * 4 * params
    if free is None or needed <= MEMORY_SHARE * free:
        return ""
    return (
        f"speed not measured: weights and gradients need {needed / 1e9:.1f} GB, "
        f"more than half the {free / 1e9:.1f} GB free on {device.type}"
    )


def free_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on ``device``: CUDA's free memory, Linux's MemAvailable (None elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_speed(
    option: str, size: int, classes: int, batch: int, device: torch.device, seconds: float
) -> dict[str, float]:
    """Eval and train throughput of ``model=<option>`` with random weights on ``device``, images/s."""
    net = build(option, size, classes, device)
    try:
        return {
            "eval_img_s": throughput(net, batch, size, device, train=False, seconds=seconds),
            "train_img_s": throughput(net, batch, size, device, train=True, seconds=seconds),
        }
    finally:
        del net
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def table_rows(
    models: Sequence[str],
    size: int = 224,
    classes: int = 1000,
    batch: int = 8,
    device: torch.device | None = None,
    seconds: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per option in ``models``; ``device`` None measures no speed. A failure fills the note."""
    rows = []
    for index, option in enumerate(models, 1):
        start = time.perf_counter()
        row: dict[str, Any] = {"model": option}
        try:
            row = describe(option, size, classes)
            refusal = too_big(row["params"], device) if device is not None else ""
            if refusal:
                row["note"] = "; ".join(filter(None, [row["note"], refusal]))
            elif device is not None:
                row.update(measure_speed(option, size, classes, batch, device, seconds))
        except Exception as err:  # one network that cannot take this size must not cost the whole table
            row["note"] = "; ".join(filter(None, [row.get("note"), _one_line(err)]))
        if progress:
            progress(f"[{index}/{len(models)}] {option}: {time.perf_counter() - start:.1f} s")
        rows.append(row)
    return rows


def _one_line(err: BaseException) -> str:
    while err.__cause__ is not None:  # Hydra wraps the network's own error: that one says what is wrong
        err = err.__cause__
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}"


def sort_rows(rows: list[dict[str, Any]], column: str, descending: bool = False) -> list[dict[str, Any]]:
    """``rows`` ordered by ``column``, empty cells last; an unknown column is refused with the valid ones."""
    if column not in COLUMNS:
        raise ConfigError(
            f"--sort {column!r} is not a column of the table; choose one of {', '.join(COLUMNS)}"
        )
    present = [r for r in rows if r.get(column) not in (None, "")]
    empty = [r for r in rows if r.get(column) in (None, "")]

    def key(row: dict[str, Any]) -> Any:
        value = row[column]
        return value.lower() if isinstance(value, str) else value

    return sorted(present, key=key, reverse=descending) + empty


def _cell(column: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if column == "params":
        return f"{value:,}"
    if column in ("gmacs", "top1"):
        return f"{value:.3f}"
    if column in ("weights_mb", "eval_img_s", "train_img_s"):
        return f"{value:.1f}"
    return str(value).replace("|", "\\|")


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table, every column of ``COLUMNS``."""
    right = {"params", "gmacs", "stages", "top1", "weights_mb", "year", "eval_img_s", "train_img_s"}
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("--:" if c in right else "---" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c, row.get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The rows as CSV, unrounded, one line per row under a header of ``COLUMNS``."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in COLUMNS} for row in rows)


def caption(size: int, classes: int, batch: int, device: torch.device | None) -> str:
    """What the figures mean: input, classes, and where the speed was measured."""
    text = (
        f"{size}x{size} RGB input, {classes} classes, random weights. gmacs: multiply-accumulates of one "
        "image (FlopCounterMode FLOPs / 2); top1, weights_mb: torchvision's metadata for tv_weights."
    )
    if device is None:
        return text + " Speed not measured (--no-speed)."
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    return (
        text
        + f" Images/s at batch {batch} on {where}: eval_img_s forward in eval mode under inference_mode, "
        "train_img_s forward + backward in train mode."
    )


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when there is one) as a device; cuda without one is refused."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here; use --device cpu or auto")
    return torch.device(name)


def _progress(message: str) -> None:
    print(f"cnnlab-models: {message}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    cli = argparse.ArgumentParser(prog="cnnlab-models", description=__doc__.splitlines()[0])
    cli.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    cli.add_argument("--classes", type=int, default=1000, help="number of classes (default 1000, ImageNet's)")
    cli.add_argument("--models", default="", help="comma-separated model options (default: every classifier)")
    cli.add_argument("--sort", default=None, help=f"column to order by: {', '.join(COLUMNS)}")
    cli.add_argument("--descending", action="store_true", help="largest first (with --sort)")
    cli.add_argument("--batch", type=int, default=2, help="batch size of the speed measurement (default 2)")
    cli.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="where to time")
    cli.add_argument(
        "--seconds", type=float, default=0.5, help="timed per model and mode, after a warm-up (default 0.5)"
    )
    cli.add_argument("--no-speed", action="store_true", help="leave the throughput columns empty")
    cli.add_argument("--out", type=Path, default=None, help="folder to write models.md and models.csv into")
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print the table (and write it with ``--out``)."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        for name in ("size", "classes", "batch"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name} must be a whole number of at least 1, not {getattr(args, name)}")
        if args.sort is not None:
            sort_rows([], args.sort)  # a misspelt column is refused before minutes of measuring
        models = pick_models([m.strip() for m in args.models.split(",") if m.strip()])
        device = None if args.no_speed else resolve_device(args.device)
    except CnnlabError as err:
        cli.exit(2, f"cnnlab-models: {err}\n")
    start = time.perf_counter()
    rows = table_rows(models, args.size, args.classes, args.batch, device, args.seconds, _progress)
    _progress(f"{len(models)} models in {time.perf_counter() - start:.1f} s")
    if args.sort is not None:
        rows = sort_rows(rows, args.sort, args.descending)
    text = markdown(rows) + "\n\n" + caption(args.size, args.classes, args.batch, device) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "models.md").write_text(text)
        write_csv(rows, args.out / "models.csv")
        _progress(f"wrote {args.out / 'models.md'} and {args.out / 'models.csv'}")


if __name__ == "__main__":
    main()
