"""Classify images with an exported model: ``cnnlab-predict export/model.pt IMAGE... [--top-k 5]``.

Needs torch and torchvision's image decoder only: no cnnlab training code, no Lightning, no Hydra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image


def load_model(path: str | Path) -> torch.jit.ScriptModule:
    """An exported model, ready for inference on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"exported model {path} does not exist (train.py writes <run>/export/model.pt)"
        )
    return torch.jit.load(str(path), map_location="cpu").eval()


def read_image(path: str | Path, channels: int) -> torch.Tensor:
    """An image file as a uint8 tensor (C, H, W) with the model's number of channels."""
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        return decode_image(str(path), mode=mode)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: not an image torchvision can read ({err})") from err


@torch.inference_mode()
def predict(model: torch.jit.ScriptModule, image: torch.Tensor, top_k: int = 5) -> list[tuple[str, float]]:
    """The ``top_k`` (class name, probability) pairs for one image, most likely first."""
    probs = model(image)[0]
    values, indices = probs.topk(min(top_k, probs.numel()))
    return [(model.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def main(argv: list[str] | None = None) -> None:
    """Command line: print the top-k classes of each image."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported model.pt")
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model)
    except (FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"cnnlab-predict: {err}\n")
    failed = 0
    for path in args.images:
        try:
            ranked = predict(model, read_image(path, int(model.in_channels)), args.top_k)
        except (FileNotFoundError, ValueError) as err:
            print(f"cnnlab-predict: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
