"""The autoencoders: images of the input's shape in [0, 1] at any size, encoder stages that freeze and
transfer, a real learning signal, TorchScript for export, and configs that match the constructors."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from cnnlab import CONF_DIR
from cnnlab.models.autoencoders import ConvAutoencoder, LinearAutoencoder
from cnnlab.models.base import OUTPUTS

SMALL_CONV = {"widths": (4, 8, 8)}


def squares(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` black images in [0, 1], each with one bright square of its own size, place and colour."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, channels, size, size)
    for image in images:
        side = int(torch.randint(size // 4, size // 2, (1,), generator=g))
        top, left = torch.randint(0, size - side, (2,), generator=g).tolist()
        image[:, top : top + side, left : left + side] = 0.5 + 0.5 * torch.rand(channels, 1, 1, generator=g)
    return images


def save_checkpoint(model: nn.Module, path: Path, **extra: Any) -> Path:
    """Write ``model`` as the network of a cnnlab checkpoint."""
    torch.save({"state_dict": {"net." + k: v for k, v in model.state_dict().items()}, **extra}, path)
    return path


def test_linear_autoencoder_is_the_course_network() -> None:
    model = LinearAutoencoder(in_channels=1, image_size=28)
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(784, 256), (256, 32), (32, 256), (256, 784)]
    assert len(model.stages) == 2 and model.output == "image" and model.output in OUTPUTS
    x = torch.rand(5, 1, 28, 28)
    code = model.encode(x)
    assert code.shape == (5, 32)
    assert model.decode(code).shape == (5, 1, 28, 28)
    torch.testing.assert_close(model(x), model.decode(code))
    torch.testing.assert_close(code, model.forward_stages(x)[-1])
    assert model.preprocessing is None and model.weights_report is None


@pytest.mark.parametrize("size", [28, 32, 61, 64, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_linear_autoencoder_reconstructs_any_size(channels: int, size: int) -> None:
    model = LinearAutoencoder(channels, size, hidden=(16,), bottleneck=4)
    # far outside [0, 1], so that only the sigmoid keeps the output in range
    y = model(50 * torch.randn(1, channels, size, size))
    assert y.shape == (1, channels, size, size)
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("upsample", ["interpolate", "transposed"])
@pytest.mark.parametrize("size", [28, 32, 61, 64, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_autoencoder_output_has_the_input_shape(channels: int, size: int, upsample: str) -> None:
    model = ConvAutoencoder(channels, size, upsample=upsample, **SMALL_CONV)
    y = model(50 * torch.randn(1, channels, size, size))
    assert y.shape == (1, channels, size, size)
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("bottleneck", [None, 6])
def test_conv_autoencoder_takes_non_square_sizes_it_was_not_built_for(bottleneck: int | None) -> None:
    model = ConvAutoencoder(3, 28, bottleneck=bottleneck, **SMALL_CONV)
    assert model(torch.rand(2, 3, 61, 47)).shape == (2, 3, 61, 47)


def test_conv_autoencoder_code_and_decode() -> None:
    model = ConvAutoencoder(1, 28, widths=(4, 8, 16), bottleneck=6).eval()
    x = torch.rand(2, 1, 28, 28)
    code = model.encode(x)
    # 28 px is padded to 32, then halved three times; the 1x1 bottleneck sets the channels
    assert code.shape == (2, 6, 4, 4)
    assert model.decode(code).shape == (2, 1, 28, 28)  # by default the configured image size
    assert model.decode(code, [30, 25]).shape == (2, 1, 30, 25)
    torch.testing.assert_close(model(x), model.decode(code))


def test_conv_autoencoder_stages_are_the_encoder() -> None:
    model = ConvAutoencoder(1, 32, widths=(4, 8, 16), bottleneck=6).eval()
    assert len(model.stages) == 4  # one per width, then the bottleneck
    assert len(ConvAutoencoder(1, 32, widths=(4, 8, 16)).stages) == 3
    x = torch.rand(2, 1, 32, 32)
    outputs = model.forward_stages(x)
    assert [o.shape[-1] for o in outputs] == [16, 8, 4, 4]
    torch.testing.assert_close(model.encode(x), outputs[-1])


@pytest.mark.parametrize("upsample", ["bilinear", "nearest", ""])
def test_unknown_upsample_names_the_choices(upsample: str) -> None:
    with pytest.raises(ValueError, match=rf"model.upsample={upsample!r}.*interpolate.*transposed"):
        ConvAutoencoder(1, 28, upsample=upsample)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LinearAutoencoder, {"hidden": (32, 16), "bottleneck": 8}),
        (ConvAutoencoder, {"bottleneck": 4, **SMALL_CONV}),
    ],
    ids=["linear", "conv"],
)
def test_a_frozen_first_stage_gets_no_gradient_while_the_rest_learn(
    cls: type[nn.Module], kwargs: dict[str, Any]
) -> None:
    model = cls(1, 16, **kwargs)
    model.stages[0].requires_grad_(False)
    x = torch.rand(4, 1, 16, 16)
    F.mse_loss(model(x), x).backward()
    assert all(p.grad is None for p in model.stages[0].parameters())
    for part in [*model.stages[1:], model.decoder]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.mark.parametrize(
    ("make", "channels", "size"),
    [
        (lambda: LinearAutoencoder(1, 28), 1, 28),
        (lambda: ConvAutoencoder(1, 28, widths=(8, 16, 32)), 1, 28),
        (lambda: ConvAutoencoder(3, 32, widths=(8, 16), bottleneck=4, upsample="transposed"), 3, 32),
    ],
    ids=["linear", "conv-interpolate", "conv-transposed-bottleneck"],
)
def test_training_reconstructs_each_image(make: Any, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model, x = make(), squares(8, channels, size)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = F.mse_loss(model(x), x).item()
    for _ in range(60):
        loss = F.mse_loss(model(x), x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # better than the average image: the network tells the images apart, it does not only learn the mean
    average = F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x).item()
    assert loss.item() < first / 2 and loss.item() < average


@pytest.mark.parametrize(
    "model",
    [
        LinearAutoencoder(3, 20, hidden=(32,), bottleneck=8),
        ConvAutoencoder(3, 20, upsample="interpolate", **SMALL_CONV),
        ConvAutoencoder(3, 20, bottleneck=5, upsample="transposed", **SMALL_CONV),
    ],
    ids=["linear", "conv-interpolate", "conv-transposed-bottleneck"],
)
def test_scripts_for_export(model: nn.Module) -> None:
    model.eval()
    x = torch.rand(2, 3, 20, 20)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.parametrize("name", ["autoencoder_linear", "autoencoder_conv"])
def test_config_keys_are_constructor_arguments(name: str) -> None:
    data = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    cfg = OmegaConf.merge({"data": data}, {"model": OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")})
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    cls = {"LinearAutoencoder": LinearAutoencoder, "ConvAutoencoder": ConvAutoencoder}[
        model_cfg.pop("_target_").rsplit(".", 1)[1]
    ]
    assert set(model_cfg) <= set(inspect.signature(cls).parameters), (
        f"{name}.yaml sets keys {cls} does not take"
    )
    assert model_cfg["weights"] is None and model_cfg["in_channels"] == 1 and model_cfg["image_size"] == 28
    model = instantiate(cfg.model)  # as a run builds it: lists arrive as ListConfig
    assert isinstance(model, cls) and model(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LinearAutoencoder, {"hidden": (32,), "bottleneck": 8}),
        (ConvAutoencoder, {"bottleneck": 4, **SMALL_CONV}),
    ],
    ids=["linear", "conv"],
)
def test_transfer_copies_the_encoder_stages_from_a_checkpoint(
    cls: type[nn.Module], kwargs: dict[str, Any], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    source = cls(1, 16, **kwargs)
    path = save_checkpoint(source, tmp_path / "run.ckpt")
    torch.manual_seed(1)
    model = cls(1, 16, weights=str(path), **kwargs)
    theirs, ours = source.state_dict(), model.state_dict()
    stage_keys = [k for k in ours if k.startswith("stages.")]
    assert stage_keys and sorted(model.weights_report.loaded) == sorted(stage_keys)
    for key in stage_keys:
        torch.testing.assert_close(ours[key], theirs[key])
    # the decoder is not a stage: it starts anew, as a classifier's head does
    decoder = [k for k in ours if k.startswith("decoder.") and ours[k].dim() > 1]  # its linears and convs
    assert decoder and all(not torch.equal(ours[k], theirs[k]) for k in decoder)


def test_transferred_autoencoder_still_takes_images_in_0_1(tmp_path: Path) -> None:
    # a classification run's checkpoint carries its normalisation; the autoencoder's target is the raw image
    source = ConvAutoencoder(1, 16, **SMALL_CONV)
    contract = {"mean": [0.13], "std": [0.31], "image_size": 16, "resize_size": 16}
    path = save_checkpoint(source, tmp_path / "run.ckpt", cnnlab={"contract": contract})
    model = ConvAutoencoder(1, 16, weights=str(path), **SMALL_CONV)
    assert model.weights_report.loaded and model.preprocessing is None
