"""``cnnlab-visualize``: PNGs of what a CNN sees, into ``--out`` (a run's ``figures/`` by default) and, for a
run, its TensorBoard log too.

    cnnlab-visualize filters IMAGE [--kernel "1,0,-1;2,0,-2;1,0,-1"]
    cnnlab-visualize weights RUN|CKPT
    cnnlab-visualize features RUN|CKPT IMAGE [--stage K]
    cnnlab-visualize cam RUN|CKPT IMAGE [--class C] [--method gradcam|gradcam++|scorecam|eigencam|...]
    cnnlab-visualize embedding RUN|CKPT [--limit N]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)

#: where pictures of no run go
DEFAULT_OUT = Path("outputs/visualize")


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = parser().parse_args(argv)
    try:
        written = args.run(args)
    except CnnlabError as err:
        sys.exit(f"cnnlab-visualize: {err}")
    for path in written:
        print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    """The sub-commands and their options."""
    top = argparse.ArgumentParser(prog="cnnlab-visualize", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run: Any, text: str, source: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        if source:
            sub.add_argument("source", metavar="RUN|CKPT", help="a run folder or a .ckpt file")
        sub.add_argument("--out", type=Path, help="folder for the PNGs (default: the run's figures/)")
        sub.set_defaults(run=run)
        return sub

    sub = command("filters", filters, "the course's kernels and pooling applied to an image", source=False)
    sub.add_argument("image", type=Path)
    sub.add_argument("--kernel", help='a kernel of your own: rows split by ";", values by ","')
    command("weights", weights, "the first convolution's filters as a grid")
    sub = command("features", features, "the feature maps of one stage for an image")
    sub.add_argument("image", type=Path)
    sub.add_argument("--stage", type=int, help="the stage (0 first; default: the last)")
    sub.add_argument("--channels", type=int, default=32, help="how many maps to show (default 32)")
    sub = command("cam", cam, "a class activation map laid over the image")
    sub.add_argument("image", type=Path)
    sub.add_argument("--class", dest="target", type=int, help="the class index (default: the predicted one)")
    sub.add_argument(
        "--method", default=None, help="gradcam (default; eigencam for detectors), gradcam++, ..."
    )
    sub = command("embedding", embedding, "penultimate features of the test split in 2-D (PCA, t-SNE)")
    sub.add_argument("--limit", type=int, default=1000, help="at most this many test images (default 1000)")
    return top


def filters(args: argparse.Namespace) -> list[Path]:
    from cnnlab.data.io import read_image
    from cnnlab.visualize import filters as bank

    kernels = dict(bank.KERNELS)
    if args.kernel:
        kernels["your kernel"] = bank.parse_kernel(args.kernel)
    image = read_image(args.image, 1)[0].float() / 255.0
    out = (args.out or DEFAULT_OUT) / f"filters_{args.image.stem}.png"
    return [_save(bank.figure(image, bank.filter_bank(image, kernels)), out)]


def weights(args: argparse.Namespace) -> list[Path]:
    import matplotlib.pyplot as plt

    from cnnlab.visualize import inside
    from cnnlab.visualize.filters import grid_side

    loaded = inside.load(args.source)
    filters_ = inside.first_filters(loaded.net)
    tiles = inside.filter_tiles(filters_)
    rows, columns = grid_side(len(tiles))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.8 + 0.4, rows * 0.8 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile in zip(axes.flat, tiles, strict=False):
        ax.imshow(tile if tile.shape[-1] == 3 else tile[..., 0], cmap="gray", interpolation="nearest")
    out_c, in_c, kh, kw = filters_.shape
    fig.suptitle(f"first convolution: {out_c} filters of {in_c} x {kh} x {kw}", fontsize=10)
    fig.tight_layout()
    return [_save(fig, _out(args, loaded) / "weights_first_conv.png", loaded, "visualize/weights")]


def features(args: argparse.Namespace) -> list[Path]:
    import matplotlib.pyplot as plt

    from cnnlab.visualize import inside
    from cnnlab.visualize.filters import grid_side

    loaded = inside.load(args.source)
    net_input, _ = inside.prepare(loaded, args.image)
    stage, maps = inside.features(loaded, net_input, args.stage)
    shown = maps[: max(1, args.channels)]
    rows, columns = grid_side(len(shown))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1 + 0.4, rows * 1.1 + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, values) in enumerate(zip(axes.flat, shown, strict=False)):
        ax.imshow(values.numpy(), cmap="viridis", interpolation="nearest")
        ax.set_title(str(k), fontsize=7)
    fig.suptitle(
        f"stage {stage}: {len(shown)} of {maps.shape[0]} maps of {maps.shape[1]} x {maps.shape[2]}",
        fontsize=10,
    )
    fig.tight_layout()
    out = _out(args, loaded) / f"features_stage{stage}_{args.image.stem}.png"
    return [_save(fig, out, loaded, f"visualize/features_stage{stage}")]


def cam(args: argparse.Namespace) -> list[Path]:
    from PIL import Image, ImageDraw

    from cnnlab.serving import draw
    from cnnlab.visualize import inside

    loaded = inside.load(args.source)
    net_input, shown = inside.prepare(loaded, args.image)
    method = args.method or ("eigencam" if loaded.contract.get("task") == "detection" else "gradcam")
    values, what = inside.cam(loaded, net_input, args.target, method)
    picture = draw.rgb(shown)
    overlay = draw.heat(picture, values)
    side = np.concatenate([picture, overlay], axis=1)
    scale = max(1, 256 // side.shape[0])  # small inputs (digits at 16 px) enlarged so that a person can see
    board = Image.fromarray(side).resize((side.shape[1] * scale, side.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("RGB", (board.width, board.height + 18), "white")
    canvas.paste(board, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), what, fill="black")
    out = _out(args, loaded) / f"cam_{method}_{args.image.stem}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    _to_tensorboard(loaded, f"visualize/cam_{method}", np.asarray(canvas))
    return [out]


def embedding(args: argparse.Namespace) -> list[Path]:
    from cnnlab.visualize import embedding as emb
    from cnnlab.visualize import inside

    loaded = inside.load(args.source)
    values, truth, guessed = emb.test_features(loaded, args.limit)
    points = {method: emb.project(values, method) for method in ("pca", "tsne")}
    names = list(loaded.contract.get("class_names") or [str(k) for k in range(int(truth.max()) + 1)])
    fig = emb.figure(points, truth, guessed, names)
    return [_save(fig, _out(args, loaded) / "embedding.png", loaded, "visualize/embedding")]


def _out(args: argparse.Namespace, loaded: Any) -> Path:
    return args.out or loaded.run / "figures"


def _save(fig: Any, path: Path, loaded: Any = None, tag: str | None = None) -> Path:
    """Write a matplotlib figure as a PNG (and into the run's TensorBoard log), then close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    if loaded is not None and tag:
        fig.canvas.draw()
        _to_tensorboard(loaded, tag, np.asarray(fig.canvas.buffer_rgba())[..., :3])
    plt.close(fig)
    return path


def _to_tensorboard(loaded: Any, tag: str, picture: np.ndarray) -> None:
    """A picture into the run's TensorBoard log, beside its training curves (a run without one: none)."""
    folder = loaded.run / "tensorboard"
    if not folder.is_dir():
        return
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder / "visualize")) as writer:
        writer.add_image(tag, torch.from_numpy(picture.copy()).permute(2, 0, 1), 0)


if __name__ == "__main__":
    main()
