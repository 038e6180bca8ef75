"""Run an exported model on image files: ``cnnlab-predict MODEL IMAGE... [options]``.

MODEL is a ``model.pt2``, ``model.onnx`` or ``model.pt`` (or the export folder holding them): every format
gives the same records. What is shown belongs to the model's task (its serving module, named in the model's
contract): one line per image (the top-k classes, a score and decision, class shares, boxes), ``--json``
the records themselves, ``--out DIR`` pictures of them. Needs torch and torchvision (onnxruntime for
``.onnx``) only: no cnnlab training code, no Lightning, no Hydra.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from cnnlab.data.io import ImageReadError, read_image
from cnnlab.data.scan import IMAGE_EXTENSIONS
from cnnlab.errors import CnnlabError
from cnnlab.serving import runtime


def image_files(paths: Sequence[Path]) -> list[Path]:
    """The files given, with each folder replaced by the images in it (sorted by name)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(path)
    return found


def read_images(paths: Sequence[Path], channels: int) -> tuple[list[tuple[Path, Tensor]], list[Path]]:
    """The readable images as (path, tensor), and the paths that could not be read (each said on stderr)."""
    images, failures = [], []
    for path in paths:
        try:
            images.append((path, read_image(path, channels)))
        except ImageReadError as err:
            print(f"cnnlab-predict: {err}", file=sys.stderr)
            failures.append(path)
    return images, failures


def output_names(paths: Sequence[Path]) -> list[str]:
    """A file stem per image, led by its folder's name (``crack_000``) or numbered where two would clash."""
    taken: set[str] = set()
    names = []
    for path in paths:
        name = path.stem
        if name in taken:
            name = f"{path.parent.name}_{path.stem}"
        base, number = name, 1
        while name in taken:
            number += 1
            name = f"{base}_{number}"
        taken.add(name)
        names.append(name)
    return names


def show(model: runtime.Model, images: list[tuple[Path, Tensor]], options: dict[str, Any]) -> None:
    """Print a line per image (or the records as JSON), writing pictures into ``options['out']``."""
    serving = model.serving
    records = runtime.predict(model, [image for _, image in images], **options)
    if options.get("json"):
        print(
            json.dumps([{"image": str(p), **r} for (p, _), r in zip(images, records, strict=True)], indent=2)
        )
        return
    out: Path | None = options.get("out")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    names = output_names([path for path, _ in images])
    order = getattr(serving, "order", lambda found: range(len(found)))(records)
    for i in order:
        (path, image), record = images[i], records[i]
        line = f"{path}: {serving.line(record)}"
        if out is not None:
            written = serving.save(record, image, out, names[i], options)
            line += f" -> {written[0]}"
        print(line)
    footer = getattr(serving, "footer", None)
    if footer is not None and (text := footer(records, options)):
        print(text)


def main(argv: list[str] | None = None) -> None:
    """Command line: show the model's predictions for each image."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", type=Path, help="an exported model.pt2, model.onnx or model.pt, or its folder"
    )
    parser.add_argument(
        "images", type=Path, nargs="+", help="image files (PNG, JPEG, ...) or folders of them"
    )
    parser.add_argument("--json", action="store_true", help="print each image's record as JSON")
    known, _ = parser.parse_known_args(argv)
    try:
        model = runtime.load(known.model)
    except CnnlabError as err:
        parser.exit(2, f"cnnlab-predict: {err}\n")
    model.serving.add_arguments(parser)
    options = vars(parser.parse_args(argv))
    if options.get("out") is None and hasattr(model.serving, "DEFAULT_OUT"):
        options["out"] = model.path.parent / model.serving.DEFAULT_OUT
    try:
        runtime.options_for(model, options)
    except ValueError as err:
        parser.exit(2, f"cnnlab-predict: {err}\n")
    paths = image_files(options["images"])
    if not paths:
        parser.exit(
            2,
            f"cnnlab-predict: no images found in {', '.join(map(str, options['images']))} "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})\n",
        )
    images, failures = read_images(paths, model.in_channels)
    show(model, images, options)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
