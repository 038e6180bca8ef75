"""The UNet: per-pixel scores at the input's size for any size, encoder stages whose outputs feed the
decoder as skips, a real learning signal, TorchScript for export, and a config matching the constructor."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn import functional as F

from cnnlab import CONF_DIR
from cnnlab.models.base import OUTPUTS
from cnnlab.models.unet import UNet

SMALL = {"widths": (4, 8, 8, 16)}


def squares_and_masks(n: int, channels: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with one bright square each, and the masks of the squares (class 1 on the square)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for mask in masks:
        side = int(torch.randint(size // 4, size // 2, (1,), generator=g))
        top, left = torch.randint(0, size - side, (2,), generator=g).tolist()
        mask[top : top + side, left : left + side] = 1
    images = 0.6 * masks[:, None].float() + 0.3 * torch.rand(n, channels, size, size, generator=g)
    return images, masks


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
@pytest.mark.parametrize("size", [28, 32, 61, 64, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_scores_have_the_input_size(channels: int, size: int, upsample: str) -> None:
    model = UNet(num_classes=3, in_channels=channels, upsample=upsample, **SMALL)
    assert model(torch.randn(1, channels, size, size)).shape == (1, 3, size, size)


@pytest.mark.parametrize(("height", "width"), [(61, 47), (33, 100), (9, 15)])
def test_scores_have_the_input_size_for_odd_non_square_images(height: int, width: int) -> None:
    model = UNet(num_classes=2, in_channels=3, **SMALL)
    assert model(torch.randn(2, 3, height, width)).shape == (2, 2, height, width)


def test_defaults_are_the_four_level_unet() -> None:
    model = UNet(num_classes=5, in_channels=1)
    assert model.output == "pixel_scores" and model.output in OUTPUTS
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        outputs = model.forward_stages(x)
    assert [tuple(o.shape[1:]) for o in outputs] == [(32, 64, 64), (64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert model.preprocessing is None and model.weights_report is None


def test_unknown_upsample_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"model.upsample='nearest'.*bilinear.*transposed"):
        UNet(num_classes=2, in_channels=1, upsample="nearest")


def test_decoder_reads_the_first_stage_as_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    model = UNet(num_classes=2, in_channels=1, **SMALL).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
        real = model.forward_stages

        def without_first_skip(images: torch.Tensor) -> list[torch.Tensor]:
            outputs = real(images)
            return [torch.zeros_like(outputs[0]), *outputs[1:]]

        monkeypatch.setattr(model, "forward_stages", without_first_skip)
        # only the skip changed: the deeper stages still saw the real first-stage output
        assert not torch.allclose(model(x), expected, atol=1e-4)


def test_a_frozen_first_stage_gets_no_gradient_while_the_rest_learn() -> None:
    model = UNet(num_classes=2, in_channels=1, **SMALL)
    model.stages[0].requires_grad_(False)
    images, masks = squares_and_masks(2, 1, 32)
    F.cross_entropy(model(images), masks).backward()
    assert all(p.grad is None for p in model.stages[0].parameters())
    for part in [*model.stages[1:], model.decoder, model.head]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_training_segments_the_squares(upsample: str) -> None:
    torch.manual_seed(0)
    model = UNet(num_classes=2, in_channels=3, widths=(8, 16, 32), upsample=upsample)
    images, masks = squares_and_masks(4, 3, 32)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = F.cross_entropy(model(images), masks).item()
    for _ in range(60):
        loss = F.cross_entropy(model(images), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < first / 2
    with torch.no_grad():
        accuracy = (model.eval()(images).argmax(1) == masks).float().mean()
    assert accuracy > 0.95


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_scripts_for_export(upsample: str) -> None:
    model = UNet(num_classes=3, in_channels=3, upsample=upsample, **SMALL).eval()
    x = torch.randn(2, 3, 61, 47)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_config_keys_are_constructor_arguments() -> None:
    data = {"num_classes": 4, "in_channels": 3, "image_size": 64}
    cfg = OmegaConf.merge({"data": data}, {"model": OmegaConf.load(CONF_DIR / "model" / "unet.yaml")})
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_cfg.pop("_target_") == "cnnlab.models.unet.UNet"
    assert set(model_cfg) <= set(inspect.signature(UNet).parameters), "unet.yaml sets keys UNet does not take"
    assert model_cfg["weights"] is None and model_cfg["num_classes"] == 4 and model_cfg["in_channels"] == 3
    cfg.model.widths = [4, 8]  # a small one for speed; the lists arrive as ListConfig, as in a run
    model = instantiate(cfg.model)
    assert isinstance(model, UNet) and model(torch.randn(1, 3, 30, 30)).shape == (1, 4, 30, 30)


def test_transfer_copies_the_encoder_stages_from_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = UNet(num_classes=5, in_channels=3, **SMALL)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {"net." + k: v for k, v in source.state_dict().items()}}, path)
    torch.manual_seed(1)
    # another number of classes: the encoder transfers, the head is new
    model = UNet(num_classes=2, in_channels=3, weights=str(path), **SMALL)
    theirs, ours = source.state_dict(), model.state_dict()
    stage_keys = [k for k in ours if k.startswith("stages.")]
    assert stage_keys and sorted(model.weights_report.loaded) == sorted(stage_keys)
    for key in stage_keys:
        torch.testing.assert_close(ours[key], theirs[key])
    decoder = [k for k in ours if k.startswith("decoder.") and ours[k].dim() > 1]  # its convs
    assert decoder and all(not torch.equal(ours[k], theirs[k]) for k in decoder)
