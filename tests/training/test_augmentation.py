"""Every augmentation preset gives normalised float images of the training size, for 1 and 3 channels."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab.data import transforms as T

PRESETS = ["none", "basic", "standard", "randaugment", "trivialaugment", "autoaugment"]
RANDOM_PRESETS = [p for p in PRESETS if p != "none"]


#: each preset's config group, composed once per test process: a compose takes 0.1 s, and the tests below
#: build every preset many times
_COMPOSED: dict[str, DictConfig] = {}


def preset(make_cfg: Callable[..., DictConfig], name: str) -> T.AugmentationFactory:
    if name not in _COMPOSED:
        _COMPOSED[name] = make_cfg(f"augmentation={name}").augmentation
    return instantiate(_COMPOSED[name])


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 32, 224])
def test_preset_gives_normalised_images_of_the_training_size(
    make_cfg: Callable[..., DictConfig], name: str, channels: int, size: int
) -> None:
    transform = T.train_transform(preset(make_cfg, name), size, size, [0.5] * channels, [0.25] * channels)
    torch.manual_seed(0)
    # a source image of another size and aspect, as datasets deliver them
    image = torch.randint(0, 256, (channels, size + 5, size + 11), dtype=torch.uint8)
    for _ in range(2 if size > 32 else 4):
        out = transform(image)
        assert out.shape == (channels, size, size) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and -2.0 - 1e-5 <= out.min() and out.max() <= 2.0 + 1e-5


@pytest.mark.parametrize("name", RANDOM_PRESETS)
@pytest.mark.parametrize("channels", [1, 3])
def test_random_preset_differs_between_draws(
    make_cfg: Callable[..., DictConfig], name: str, channels: int
) -> None:
    transform = T.train_transform(preset(make_cfg, name), 32, 32, [0.5] * channels, [0.25] * channels)
    torch.manual_seed(0)
    image = torch.randint(0, 256, (channels, 32, 32), dtype=torch.uint8)
    first = transform(image)
    assert any(not torch.equal(first, transform(image)) for _ in range(5))


def test_none_preset_is_the_evaluation_transform(make_cfg: Callable[..., DictConfig]) -> None:
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    train = T.train_transform(preset(make_cfg, "none"), 32, 36, [0.5] * 3, [0.25] * 3)
    assert torch.equal(train(image), T.eval_transform(32, 36, [0.5] * 3, [0.25] * 3)(image))


@pytest.mark.parametrize("policy", ["cifar10", "imagenet", "svhn"])
def test_autoaugment_policies_on_grey_images(policy: str) -> None:
    steps = T.autoaugment(16, 16, policy=policy)
    transform = T.train_transform(lambda **size: steps, 16, 16, [0.5], [0.25])
    torch.manual_seed(0)
    for _ in range(20):  # enough draws to meet most of a policy's sub-policies
        assert transform(torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8)).shape == (1, 16, 16)


def test_unknown_autoaugment_policy_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"augmentation.policy='mnist'.*cifar10"):
        T.autoaugment(32, 32, policy="mnist")


def test_preset_reaches_the_training_loader_only(make_cfg: Callable[..., DictConfig], digits) -> None:
    dm = digits(augmentation=preset(make_cfg, "randaugment"), batch_size=8)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 16, 16) and labels.dtype == torch.long
    val_images, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(val_images, next(iter(dm.val_dataloader()))[0])  # evaluation is deterministic
