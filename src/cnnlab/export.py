"""Export a checkpoint for production: TorchScript with preprocessing, class names and input contract inside.

``python -m cnnlab.export CKPT [--out DIR]`` writes ``DIR/model.pt`` and ``DIR/model.json``. The exported
model takes uint8 images (C, H, W) or batches (N, C, H, W) of any size and returns class probabilities; it
needs torch alone, not cnnlab's training code.
"""

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.checkpoints import load_task
from cnnlab.data.transforms import Preprocess


class ExportedClassifier(nn.Module):
    """Preprocessing + network + softmax, with the class names and input contract as attributes."""

    class_names: list[str]  # a class-level annotation: TorchScript types the attribute from it
    in_channels: int
    image_size: int

    def __init__(self, net: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.preprocess = Preprocess(
            contract["image_size"], contract["resize_size"], contract["mean"], contract["std"]
        )
        self.net = net
        self.class_names = list(contract["class_names"])
        self.in_channels = int(contract["in_channels"])
        self.image_size = int(contract["image_size"])

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return torch.softmax(self.net(self.preprocess(images)), dim=1)


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, formats: list[str] | None = None) -> Path:
    """Write the checkpoint's model to ``out_dir/model.pt`` (TorchScript) and its contract to model.json."""
    formats = list(formats or ["torchscript"])
    unknown = set(formats) - {"torchscript"}
    if unknown:
        raise ValueError(f"export.formats: {sorted(unknown)} not supported; choose from ['torchscript']")
    task = load_task(ckpt_path)
    if not task.contract:
        raise ValueError(f"{ckpt_path} carries no preprocessing contract (written by an older cnnlab?)")
    module = ExportedClassifier(task.net, task.contract).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, yet still the format every runtime loads
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(module)
    path = out_dir / "model.pt"
    scripted.save(str(path))
    contract = dict(
        task.contract,
        format="torchscript",
        input="uint8 image (C,H,W) or batch (N,C,H,W), any size",
        output="class probabilities (N, num_classes)",
        checkpoint=str(ckpt_path),
    )
    (out_dir / "model.json").write_text(json.dumps(contract, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: export a checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint written by train.py (checkpoints/best.ckpt)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run folder>/export)")
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint.resolve().parent.parent / "export"
    try:
        path = export_checkpoint(args.checkpoint, out)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"cnnlab-export: {err}\n")
    print(f"exported {path} (+ model.json)")


if __name__ == "__main__":
    main()
