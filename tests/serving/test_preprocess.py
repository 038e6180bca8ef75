"""The preprocessing inside exported graphs is evaluation's, at any input size, in every format."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from cnnlab.data import transforms as T
from cnnlab.data.io import to_unit_range
from cnnlab.serving.preprocess import GEOMETRIES, Preprocess, crop_region

#: landscape, portrait, square, smaller than the crop (upsampled), odd margins on both sides
SIZES = [(37, 53), (53, 37), (28, 28), (9, 13), (31, 36), (100, 77)]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16])
def test_preprocess_is_the_evaluation_transform(geometry: str, dtype: torch.dtype) -> None:
    top = 255 if dtype == torch.uint8 else 65535
    module = Preprocess(geometry, 24, 28, [0.4] * 3, [0.2] * 3)
    scripted = torch.jit.script(module)
    for size in SIZES:
        raw = torch.randint(0, top + 1, (3, *size)).to(dtype)
        expected = T.eval_transform(24, 28, [0.4] * 3, [0.2] * 3, geometry)(tv_tensors.Image(raw))
        batch = to_unit_range(raw)[None]
        torch.testing.assert_close(module(batch)[0], expected.as_subclass(torch.Tensor), atol=1e-5, rtol=0)
        torch.testing.assert_close(scripted(batch), module(batch), atol=0, rtol=0)


def test_an_exported_preprocessing_keeps_batch_height_and_width_open() -> None:
    module = Preprocess("crop", 16, 18, [0.5], [0.25]).eval()
    auto = torch.export.Dim.AUTO
    program = torch.export.export(
        module, (torch.rand(2, 1, 23, 29),), dynamic_shapes={"images": {0: auto, 2: auto, 3: auto}}
    )
    exported = program.module()
    for batch, (height, width) in zip((1, 3, 2), [(16, 16), (41, 17), (17, 60)], strict=True):
        images = torch.rand(batch, 1, height, width)
        out = exported(images)
        assert out.shape == (batch, 1, 16, 16)
        torch.testing.assert_close(out, module(images), atol=0, rtol=0)


def test_a_crop_smaller_than_its_resize_is_refused() -> None:
    with pytest.raises(ValueError, match="smaller than the crop"):
        Preprocess("crop", 32, 28)


def test_crop_region_is_the_part_of_the_image_the_network_sees() -> None:
    contract = {"geometry": "crop", "image_size": 224, "resize_size": 256}
    # a 512 x 1024 photo: resized to 256 x 512, the central 224 square is x 144..368, y 16..240 there
    assert crop_region(512, 1024, contract) == [288.0, 32.0, 736.0, 480.0]
    assert crop_region(30, 20, {"geometry": "resize", "image_size": 16, "resize_size": 16}) == [0, 0, 20, 30]
