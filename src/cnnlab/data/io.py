"""Reading image and mask files the same way in training, evaluation, export and predict.

Images are decoded by Pillow (torchvision's own decoders are deprecated since 0.29) into tensors (C, H, W) of
their own bit depth: uint8 for 8-bit files, uint16 for 16-bit greyscale PNG and TIFF.
Every later step scales by the dtype's range (``to_unit_range``), so a 16-bit scan is never clipped to white
nor fed to a network as raw counts. Masks keep their palette indices. This module needs torch, torchvision
and Pillow only: ``cnnlab.predict`` and exported-model tooling import it without the training code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cnnlab.errors import DataError

#: PIL modes of one channel with more than 8 bits: 16-bit PNG/TIFF ("I;16*") and 32-bit integer ("I")
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: PIL modes of one index per pixel: the masks read (palette, grey, 16- and 32-bit grey, 1-bit)
MASK_MODES = ("P", "L", "I", "I;16", "1")


class ImageReadError(DataError):
    """A file that cannot be read as an image; the message names the file and the reason."""


class ImageTooLargeError(ImageReadError):
    """An image with more pixels than allowed (a web upload, say)."""


def read_image(path: str | Path, channels: int) -> torch.Tensor:
    """The image file at ``path`` as a tensor (channels, H, W), uint8 or uint16 as the file stores it."""
    path = Path(path)
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: images are read as 1 (grey) or 3 (RGB) channels")
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: no such file") from err
    if size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes)")
    with open(path, "rb") as file:
        return decode_image(file, channels, name=str(path))


def decode_image(
    source: BinaryIO | bytes, channels: int, name: str = "the image", max_pixels: int | None = None
) -> torch.Tensor:
    """An image file's contents (a binary file or bytes) as a tensor (channels, H, W), uint8 or uint16.

    ``max_pixels`` refuses larger images from their header, before anything is decoded.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageReadError(f"{name}: the file is empty (0 bytes)")
        source = io.BytesIO(source)
    try:
        with Image.open(source) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: {image.width} x {image.height} px is {image.width * image.height / 1e6:.1f} "
                    f"megapixels, more than the {max_pixels / 1e6:g} megapixels allowed"
                )
            image.load()  # decodes now: a truncated file fails here, naming itself
            if image.mode in WIDE_GREY_MODES:
                array = np.array(image).astype(np.int64).clip(0, 65535).astype(np.uint16)
                return torch.from_numpy(array)[None].expand(channels, -1, -1).contiguous()
            array = np.array(image.convert("L" if channels == 1 else "RGB"))  # writable: torch shares it
    except ImageReadError:
        raise
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{name}: not an image (no reader recognises its contents)") from err
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"{name}: too large to decode safely ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's truncated and malformed files
        truncated = "truncated" in str(err).lower()
        reason = "truncated (an interrupted copy or download?)" if truncated else str(err)
        raise ImageReadError(f"{name}: unreadable image: {reason}") from err
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def read_mask(path: str | Path) -> torch.Tensor:
    """A label PNG (palette or grey, one index per pixel) as an int64 tensor (H, W) of those indices."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in MASK_MODES:
                raise ImageReadError(
                    f"{path}: a mask must store one class index per pixel (a palette or greyscale PNG), "
                    f"not {image.mode} colours"
                )
            array = np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(f"{path}: unreadable mask ({err})") from err
    return torch.from_numpy(array.astype(np.int64))


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """A float image in [0, 1]: integer images divided by their dtype's maximum, float images as they are."""
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if image.dtype == torch.uint16:
        # uint16 supports few operations; widen first, then scale
        return image.to(torch.int32).float() / 65535.0
    return image.float()
