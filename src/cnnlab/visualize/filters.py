"""The course's image filters: fixed kernels applied with ``conv2d``, then max- and average-pooling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab.errors import ConfigError

#: the kernels of the first lesson, by name
KERNELS: dict[str, list[list[float]]] = {
    "sobel_x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],  # responds to vertical edges (changes along x)
    "sobel_y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],  # horizontal edges
    "laplacian": [[0, -1, 0], [-1, 4, -1], [0, -1, 0]],  # a high-pass filter: flat regions give 0
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "box_blur": [[1 / 9] * 3] * 3,
    "gaussian_blur": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
}


def parse_kernel(text: str) -> list[list[float]]:
    """A kernel written as rows separated by ``;`` and values by ``,`` (``"1,0,-1;2,0,-2;1,0,-1"``)."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";")]
    except ValueError:
        rows = []
    if not rows or len({len(r) for r in rows}) != 1 or not all(rows):
        raise ConfigError(
            f"--kernel {text!r}: write the rows separated by ';' and the values by ',', every row as long, "
            'e.g. --kernel "1,0,-1;2,0,-2;1,0,-1"'
        )
    return rows


def respond(image: Tensor, kernel: list[list[float]]) -> Tensor:
    """The kernel's response to a grey image (H, W): a 'valid' convolution, (H - kh + 1, W - kw + 1)."""
    weight = torch.tensor(kernel, dtype=torch.float32)[None, None]
    if image.shape[-2] < weight.shape[-2] or image.shape[-1] < weight.shape[-1]:
        raise ConfigError(f"the image ({tuple(image.shape)}) is smaller than the kernel ({len(kernel)} rows)")
    # conv2d is a cross-correlation, as in every CNN: the kernel is applied as written, not flipped
    return F.conv2d(image[None, None].float(), weight)[0, 0]


def pool(response: Tensor, size: int = 2) -> dict[str, Tensor]:
    """The response max-pooled and average-pooled (``size`` window and stride), as a CNN's pooling does."""
    x = response[None, None]
    return {
        "max_pool": F.max_pool2d(x, size)[0, 0],
        "avg_pool": F.avg_pool2d(x, size)[0, 0],
    }


def filter_bank(image: Tensor, kernels: dict[str, list[list[float]]]) -> dict[str, dict[str, Tensor]]:
    """Each kernel's response to ``image`` (H, W) and its poolings: name -> {response, max_pool, avg_pool}."""
    bank = {}
    for name, kernel in kernels.items():
        response = respond(image, kernel)
        bank[name] = {"response": response, **pool(response)}
    return bank


def figure(image: Tensor, bank: dict[str, dict[str, Tensor]]):  # noqa: ANN201 - a matplotlib Figure
    """The input beside each kernel's response, then its max and average pooling, sizes under each picture."""
    import matplotlib.pyplot as plt

    rows = len(bank)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    for row, (name, parts) in enumerate(bank.items()):
        pictures = [("input", image), (name, parts["response"])]
        pictures += [(f"{name}, {k.replace('_', ' ')} 2x2", parts[k]) for k in ("max_pool", "avg_pool")]
        for ax, (title, values) in zip(axes[row], pictures, strict=True):
            signed = title != "input" and bool((values < 0).any())
            limit = float(values.abs().max()) or 1.0
            # signed responses (edges) on a diverging map centred on 0; the others in grey
            ax.imshow(
                values.numpy(),
                cmap="RdBu_r" if signed else "gray",
                vmin=-limit if signed else None,
                vmax=limit if signed else None,
                interpolation="nearest",
            )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(f"{values.shape[0]} x {values.shape[1]} px", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def grid_side(count: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid of ``count`` pictures."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns
