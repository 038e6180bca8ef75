"""Export a checkpoint for production: ``python -m cnnlab.export CKPT [--out DIR] [--formats pt2,onnx,...]``.

Writes ``DIR/model.pt2`` (torch.export), ``DIR/model.onnx`` (one file, for onnxruntime) and ``DIR/model.pt``
(TorchScript), each the task's serving wrapper (``cnnlab.serving.<task>``: preprocessing, network, the task's
outputs) with the contract inside, and ``DIR/model.json``: the contract and, per format, its file, size,
export time, the input sizes its graph keeps open, and its largest difference to the checkpoint's module on
validation images at two input sizes. A format that cannot hold the model says why there; the others are
still written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.errors import CheckpointError, CnnlabError, ConfigError
from cnnlab.serving import formats, runtime

log = logging.getLogger(__name__)

FORMATS = formats.FORMATS
INPUT = "float images (N, C, H, W) in [0, 1], any height and width; predict and the app scale image files"
#: how many validation images each format is verified on
VERIFY_IMAGES = 4


def check_formats(chosen: Sequence[str] | None) -> list[str]:
    """The formats asked for, or a ``ConfigError`` naming the valid ones (checked before anything runs)."""
    picked = list(FORMATS if chosen is None else chosen)
    unknown = [f for f in picked if f not in FORMATS]
    if unknown or not picked:
        raise ConfigError(
            f"export.formats={picked}: choose one or more of {', '.join(FORMATS)} (or export=null for none)"
        )
    return picked


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] | None = None,
    images: Sequence[Tensor] | None = None,
) -> dict[str, Any]:
    """Write the checkpoint's model in each format into ``out_dir``, verify each, and return model.json.

    ``images``: validation images (C, H, W) as files hold them, to verify on; by default the checkpoint's
    own data is read for them (random images when it cannot be).
    """
    from cnnlab.checkpoints import load_task  # the training side: only the writer needs it

    picked = check_formats(formats)
    task = load_task(ckpt_path)
    if not task.contract:
        raise CheckpointError(f"{ckpt_path} carries no preprocessing contract (written by an older cnnlab?)")
    if not all(torch.isfinite(p).all() for p in task.net.parameters()):
        raise CheckpointError(
            f"{ckpt_path} holds NaN or infinite weights (a diverged run): nothing to export"
        )
    serving = importlib.import_module(task.serving)
    task.net.requires_grad_(False)  # frozen stages reload frozen, the others not: exporters need neither
    module = serving.wrap(task.net, task.contract).eval()
    contract = dict(
        task.contract,
        outputs=list(module.outputs),
        output={name: serving.OUTPUTS[name] for name in module.outputs},
        input=getattr(serving, "INPUT", INPUT),
        checkpoint=str(ckpt_path),
    )
    source = "validation images"
    if images is None:
        images, source = checkpoint_images(task, ckpt_path)
    batches, sizes = verification_batches(images, contract, getattr(serving, "BATCH", None) == 1)
    with torch.inference_mode():
        expected = [dict(zip(module.outputs, module(b), strict=True)) for b in batches]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    programs: dict[str, Any] = {}  # one torch.export trace for the .pt2 and the .onnx
    for fmt in picked:
        report[fmt] = export_one(fmt, module, serving, contract, out_dir, batches, expected, programs)
        report[fmt]["verified_on"] = f"{len(images)} {source} at {' and '.join(sizes)}"
    described = dict(contract, formats=report)
    (out_dir / "model.json").write_text(json.dumps(described, indent=2) + "\n")
    return described


def export_one(
    fmt: str,
    module: nn.Module,
    serving: Any,
    contract: dict[str, Any],
    out_dir: Path,
    batches: list[Tensor],
    expected: list[dict[str, Tensor]],
    programs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one format, load it back as predict does, and measure it against the module."""
    path = out_dir / f"model{formats.SUFFIXES[fmt]}"
    start = time.perf_counter()
    patches = getattr(serving, "export_patches", contextlib.nullcontext)
    try:
        with patches() if fmt != "torchscript" else contextlib.nullcontext():
            formats.write(
                fmt, module, batches[0], path, contract, getattr(serving, "DYNAMIC", True), programs
            )
        seconds = time.perf_counter() - start
        loaded = runtime.load(path)
        got = [loaded(b) for b in batches]
    except Exception as err:  # each exporter fails in its own way on a graph it cannot hold
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        log.warning("export: %s cannot hold this model: %s", fmt, reason)
        path.unlink(missing_ok=True)
        return {"error": f"{type(err).__name__}: {reason}"}
    compare = getattr(serving, "parity", parity)
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "export_seconds": round(seconds, 2),
        "input_shape": ["dynamic" if d is None else d for d in loaded.runner.shape],
        "max_abs_diff": compare(expected, got),
        # each size alone: a graph fixed to the training size matches there, and differs by the resizing
        "max_abs_diff_by_size": {
            f"{b.shape[-2]}x{b.shape[-1]}": compare(
                [e for e, c in zip(expected, batches, strict=True) if c.shape == b.shape],
                [g for g, c in zip(got, batches, strict=True) if c.shape == b.shape],
            )
            for b in {tuple(c.shape): c for c in batches}.values()
        },
    }


def parity(expected: list[dict[str, Tensor]], got: list[dict[str, Tensor]]) -> dict[str, float]:
    """Per output, over every batch: the largest absolute difference (for integer and boolean outputs, the
    share of values that differ)."""
    worst: dict[str, float] = {}
    for want, have in zip(expected, got, strict=True):
        for name, value in want.items():
            other = have[name].to(value.device)
            if value.shape != other.shape:
                raise ValueError(
                    f"output {name} has shape {tuple(other.shape)}, expected {tuple(value.shape)}"
                )
            if value.is_floating_point():
                diff = float((value.float() - other.float()).abs().max()) if value.numel() else 0.0
            else:
                diff = float((value != other).float().mean()) if value.numel() else 0.0
            worst[name] = max(worst.get(name, 0.0), diff)
    return {name: float(f"{v:.3g}") for name, v in worst.items()}


def verification_batches(
    images: Sequence[Tensor], contract: dict[str, Any], batch_of_one: bool
) -> tuple[list[Tensor], list[str]]:
    """The images at two sizes as float batches: the training size, and a larger size that is not square
    (with odd sides), so that a graph fixed to one size, or to squares, shows its difference."""
    side = int(contract["image_size"])
    width = side + side // 4 + 3
    # the larger size's long side, once the shorter is resized to the training size, is odd: a graph that
    # fixed a multiple of two anywhere shows it
    height = next(h for h in range(side + side // 2 + 1, 4 * side + 8) if (side * h // width) % 2 == 1)
    sizes = [(side, side), (height, width)]
    channels = int(contract["in_channels"])
    batches: list[Tensor] = []
    for height, width in sizes:
        resized = [
            F.interpolate(
                runtime.as_batch(image, channels), size=[height, width], mode="bilinear", antialias=True
            )
            for image in images
        ]
        batches += resized if batch_of_one else [torch.cat(resized)]
    return batches, [f"{h}x{w}" for h, w in sizes]


def checkpoint_images(task: Any, ckpt_path: str | Path) -> tuple[list[Tensor], str]:
    """Validation images of the checkpoint's own data, or seeded random ones when it cannot be read."""
    from hydra.utils import instantiate

    data_cfg = dict(task.hparams.run_config["data"])
    try:
        datamodule = instantiate(data_cfg, _partial_=True)(augmentation=None, spec=task.samples)
        datamodule.prepare_data()
        images = datamodule.sample_images(VERIFY_IMAGES)
        if images:
            return images, "validation images"
    except (CnnlabError, OSError, ValueError) as err:
        log.warning("export: the run's data could not be read (%s); verifying on random images", err)
    side, channels = int(task.contract["image_size"]), int(task.contract["in_channels"])
    generator = torch.Generator().manual_seed(0)
    randoms = [torch.rand(channels, side, side, generator=generator) for _ in range(VERIFY_IMAGES)]
    return randoms, "random images (the run's data could not be read)"


def summary(described: dict[str, Any]) -> list[str]:
    """One line per format: file, size, export time and its largest differences, or why it is missing."""
    lines = []
    for fmt, info in described["formats"].items():
        if "error" in info:
            lines.append(f"{fmt:<12} not written: {info['error']}")
            continue
        diffs = ", ".join(f"{name} {value:.2g}" for name, value in info["max_abs_diff"].items())
        lines.append(
            f"{fmt:<12} {info['file']:<11} {info['bytes'] / 1e6:6.2f} MB  {info['export_seconds']:5.1f} s  "
            f"max diff: {diffs}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    """Command line: export a checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint written by train.py (checkpoints/best.ckpt)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run folder>/export)")
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"comma-separated, of {', '.join(FORMATS)} (default: all)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="cnnlab-export: %(message)s")
    out = args.out or args.checkpoint.resolve().parent.parent / "export"
    try:
        picked = check_formats([f.strip() for f in args.formats.split(",") if f.strip()])
        if not args.checkpoint.is_file():
            raise CheckpointError(f"checkpoint {args.checkpoint} does not exist")
        described = export_checkpoint(args.checkpoint, out, picked)
    except CnnlabError as err:
        parser.exit(2, f"cnnlab-export: {err}\n")
    print("\n".join(summary(described)))
    print(f"exported to {out} (model.json: the contract and each format's measured differences)")
    if all("error" in info for info in described["formats"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
