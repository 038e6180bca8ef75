"""Run an exported model on image files: ``cnnlab-predict export/model.pt IMAGE... [options]``.

What is shown (top-k classes, a score and decision, a mask or boxes written beside the images) belongs to the
model's task: its serving module (``cnnlab.serving.<task>``, named inside the model) adds the options and
shows the results. Needs torch and torchvision only: no cnnlab training code, no Lightning, no Hydra.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch
import torchvision  # noqa: F401  (registers the operators, e.g. nms, that detectors' exported graphs call)

from cnnlab.data.io import ImageReadError, read_image
from cnnlab.data.scan import IMAGE_EXTENSIONS
from cnnlab.errors import CheckpointError

SERVING_PACKAGE = "cnnlab.serving."


def load_model(path: str | Path) -> torch.jit.ScriptModule:
    """An exported model, ready for inference on the CPU, or a ``CheckpointError`` saying what the file is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported model {path} does not exist (train.py writes <run>/export/model.pt)")
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export, yet still the format exported models are in
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as err:
        raise CheckpointError(describe_unloadable(path, err)) from None
    serving_of(model)  # refuses a TorchScript model cnnlab did not export
    return model


def describe_unloadable(path: Path, err: BaseException) -> str:
    """Why ``path`` is not an exported model, told from what the file holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    if any(name.endswith("/data.pkl") for name in names) and not any("/code/" in name for name in names):
        return (
            f"{path} is a training checkpoint, not an exported model: export it first with "
            f"`python -m cnnlab.export {path}` and give predict the model.pt it writes"
        )
    return (
        f"{path} is not an exported model: it is truncated (an interrupted copy?) or another kind of file; "
        "predict takes the model.pt that cnnlab.export (or train.py) writes into <run>/export/"
    )


def serving_of(model: torch.jit.ScriptModule) -> ModuleType:
    """The serving module that knows how to show this model's predictions."""
    name = str(getattr(model, "serving", ""))
    if not name.startswith(SERVING_PACKAGE):
        raise CheckpointError(
            "this TorchScript model was not exported by cnnlab (it names no cnnlab serving module); predict "
            "takes the model.pt that cnnlab.export (or train.py) writes into <run>/export/"
        )
    return importlib.import_module(name)


def image_files(paths: Sequence[Path]) -> list[Path]:
    """The files given, with each folder replaced by the images in it (sorted by name)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(path)
    return found


def read_images(
    paths: Sequence[Path], channels: int, failures: list[Path]
) -> Iterator[tuple[Path, torch.Tensor]]:
    """Each readable image as (path, tensor); unreadable ones go to stderr and to ``failures``."""
    for path in paths:
        try:
            yield path, read_image(path, channels)
        except ImageReadError as err:
            print(f"cnnlab-predict: {err}", file=sys.stderr)
            failures.append(path)


def main(argv: list[str] | None = None) -> None:
    """Command line: show the model's predictions for each image."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported model.pt")
    parser.add_argument(
        "images", type=Path, nargs="+", help="image files (PNG, JPEG, ...) or folders of them"
    )
    known, _ = parser.parse_known_args(argv)
    try:
        model = load_model(known.model)
    except CheckpointError as err:
        parser.exit(2, f"cnnlab-predict: {err}\n")
    serving = serving_of(model)
    serving.add_arguments(parser)
    args = parser.parse_args(argv)
    failures: list[Path] = []
    serving.show(model, read_images(image_files(args.images), int(model.in_channels), failures), args)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
