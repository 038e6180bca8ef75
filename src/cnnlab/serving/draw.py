"""Pictures of predictions, one implementation for TensorBoard figures, ``predict`` and the app.

Every function takes an image as a tensor (C, H, W) of any dtype (uint8, uint16 or float in [0, 1]) or an
RGB array, and returns an RGB array (H, W, 3) uint8 at the image's own size: class colours over the pixels,
a heat map over the region a network saw, boxes with captions. ``png`` and ``data_url`` encode the result.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from cnnlab.data.io import to_unit_range

#: box colours by class index (cycled), distinct on photos and on the shapes' dull backgrounds
BOX_COLOURS = [
    (255, 64, 64),
    (64, 224, 64),
    (64, 128, 255),
    (255, 208, 0),
    (224, 64, 224),
    (0, 224, 224),
    (255, 144, 0),
    (160, 96, 255),
    (160, 255, 96),
    (255, 255, 255),
]


def rgb(image: Tensor | np.ndarray) -> np.ndarray:
    """The image as RGB (H, W, 3) uint8: grey repeated, any bit depth scaled."""
    if isinstance(image, np.ndarray):
        return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    pixels = (to_unit_range(image.detach().cpu()).clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())


@cache
def palette() -> np.ndarray:
    """Pascal VOC's colour of each class index 0..255 (0 black, 255 cream) as (256, 3) uint8."""
    index = np.arange(256)
    colours = np.zeros((256, 3), dtype=np.uint8)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colours[:, channel] |= (((index >> channel) & 1) << shift).astype(np.uint8)
        index = index >> 3
    return colours


@cache
def _heat_colours(name: str) -> np.ndarray:
    from matplotlib import colormaps  # the colour table only: no figure machinery

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def classes(image: Tensor | np.ndarray, class_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image tinted with each pixel's class colour (VOC's palette), class 0 (background) left clear."""
    pixels = rgb(image).astype(np.float32)
    tinted = class_map != 0
    pixels[tinted] = (1 - alpha) * pixels[tinted] + alpha * palette()[class_map[tinted]]
    return pixels.round().astype(np.uint8)


def heat_map(values: np.ndarray | Tensor, colours: str = "inferno") -> np.ndarray:
    """A map of values in [0, 1] (h, w) as an RGB picture of the same size (white-hot: high)."""
    index = (np.clip(np.asarray(values, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    return _heat_colours(colours)[index]


def heat(
    image: Tensor | np.ndarray,
    values: np.ndarray | Tensor,
    region: Sequence[float] | None = None,
    alpha: float = 0.5,
    colours: str = "jet",
) -> np.ndarray:
    """The image with a map of values in [0, 1] laid over ``region`` (x1, y1, x2, y2; default: all of it),
    enlarged bilinearly to the region's pixels."""
    pixels = rgb(image).copy()
    height, width = pixels.shape[:2]
    x1, y1, x2, y2 = region if region is not None else (0, 0, width, height)
    left, top = max(0, round(x1)), max(0, round(y1))
    right, bottom = min(width, round(x2)), min(height, round(y2))
    if right <= left or bottom <= top:
        return pixels
    small = torch.as_tensor(np.asarray(values, dtype=np.float32))[None, None]
    large = F.interpolate(small, size=[bottom - top, right - left], mode="bilinear", align_corners=False)
    coloured = heat_map(large[0, 0].numpy(), colours).astype(np.float32)
    part = pixels[top:bottom, left:right].astype(np.float32)
    pixels[top:bottom, left:right] = ((1 - alpha) * part + alpha * coloured).round().astype(np.uint8)
    return pixels


def boxes(
    image: Tensor | np.ndarray,
    xyxy: Tensor | Sequence[Sequence[float]],
    labels: Sequence[int],
    class_names: Sequence[str],
    scores: Sequence[float] | None = None,
    width: int = 2,
) -> np.ndarray:
    """The image with each box outlined in its class's colour and captioned 'class score'."""
    pixels = rgb(image)
    xyxy = torch.as_tensor(xyxy, dtype=torch.float32).reshape(-1, 4)
    labels = [int(v) for v in labels]
    if len(labels) == 0:
        return pixels
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels]
    if scores is not None:
        names = [f"{name} {float(score):.2f}" for name, score in zip(names, scores, strict=True)]
    colours = [BOX_COLOURS[i % len(BOX_COLOURS)] for i in labels]
    # captions in black on the box's colour: legible on any picture, even on an object of that colour
    drawn = draw_bounding_boxes(
        torch.from_numpy(pixels).permute(2, 0, 1), xyxy, names, colours, width=width, fill_labels=True
    )
    return np.ascontiguousarray(drawn.permute(1, 2, 0).numpy())


def mask_image(class_map: np.ndarray) -> Image.Image:
    """A class map (H, W) as a palette image: the indices stored, VOC's colours shown."""
    image = Image.fromarray(np.asarray(class_map).astype(np.uint8))
    image.putpalette(palette().flatten().tolist())
    return image


def png(picture: np.ndarray | Image.Image) -> bytes:
    """A picture (RGB or grey array, or a PIL image) as PNG bytes."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.ascontiguousarray(picture))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(picture: np.ndarray | Image.Image) -> str:
    """A picture as a ``data:image/png;base64,...`` URL, for a web page or a JSON answer."""
    return "data:image/png;base64," + base64.b64encode(png(picture)).decode("ascii")


def grey(values: np.ndarray | Tensor) -> np.ndarray:
    """Values in [0, 1] (H, W) or an image (C, H, W) in [0, 1] as uint8 pixels, for PNG files."""
    array = np.clip(np.asarray(values, dtype=np.float32), 0, 1)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    return (array * 255).round().astype(np.uint8)
