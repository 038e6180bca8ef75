"""Export a checkpoint for production: TorchScript with preprocessing, output step and contract inside.

``python -m cnnlab.export CKPT [--out DIR]`` writes ``DIR/model.pt`` and ``DIR/model.json``. The task's
serving module (``cnnlab.serving.<task>``) wraps the network: the exported model takes images of any size
(uint8, uint16 or float in [0, 1]) and returns what the task predicts; it needs torch alone, not cnnlab's
training code.
"""

import argparse
import importlib
import json
import warnings
from pathlib import Path

import torch

from cnnlab.checkpoints import load_task

FORMATS = ("torchscript",)
INPUT = "image (C,H,W) or batch (N,C,H,W) of any size: uint8, uint16 (16-bit files) or float in [0, 1]"


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, formats: list[str] | None = None) -> Path:
    """Write the checkpoint's model to ``out_dir/model.pt`` (TorchScript) and its contract to model.json."""
    formats = list(formats or FORMATS)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"export.formats: {sorted(unknown)} not supported; choose from {list(FORMATS)}")
    task = load_task(ckpt_path)
    if not task.contract:
        raise ValueError(f"{ckpt_path} carries no preprocessing contract (written by an older cnnlab?)")
    if not all(torch.isfinite(p).all() for p in task.net.parameters()):
        raise ValueError(f"{ckpt_path} holds NaN or infinite weights (a diverged run): nothing to export")
    module = task.export_module().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, yet still the format every runtime loads
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(module)
    path = out_dir / "model.pt"
    partial = path.with_suffix(".pt.partial")
    scripted.save(str(partial))
    partial.replace(path)  # a reader never sees half a model
    serving = importlib.import_module(task.serving)
    contract = dict(
        task.contract,
        format="torchscript",
        input=getattr(serving, "INPUT", INPUT),
        output=serving.OUTPUT,
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
