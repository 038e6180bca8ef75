"""Image transforms: the deterministic preprocessing shared with exported models, and augmentation presets.

Every pipeline works on uint8 image tensors (C, H, W). Evaluation is ``Preprocess``: resize the shorter side,
centre-crop, scale to [0, 1], normalise. The same module runs inside exported models, so a checkpoint and its
export see identical inputs. Augmentation presets (the ``augmentation`` config group) are functions that
return the geometric and photometric steps for training; they end at ``image_size`` pixels, and
``Preprocess(resize=False)`` then scales and normalises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

AugmentationFactory = Callable[..., list[nn.Module]]


class Preprocess(nn.Module):
    """Resize (shorter side), centre-crop, scale to [0, 1] and normalise a uint8 image or batch."""

    def __init__(
        self,
        image_size: int,
        resize_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.resize_size = int(resize_size)
        self.resize = resize
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        x = image.float()
        if image.dtype == torch.uint8:
            x = x / 255.0
        if self.resize:
            x = self._resize_and_crop(x)
        return (x - self.mean) / self.std

    def _resize_and_crop(self, x: Tensor) -> Tensor:
        batched = x.dim() == 4
        if not batched:
            x = x.unsqueeze(0)
        h, w = x.shape[-2], x.shape[-1]
        scale = float(self.resize_size) / float(min(h, w))
        new_h, new_w = (
            max(self.image_size, int(round(h * scale))),
            max(self.image_size, int(round(w * scale))),
        )
        if new_h != h or new_w != w:
            # antialias matches PIL's and torchvision's Resize when shrinking photos
            x = F.interpolate(x, size=[new_h, new_w], mode="bilinear", align_corners=False, antialias=True)
        top, left = (new_h - self.image_size) // 2, (new_w - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size]
        return x if batched else x.squeeze(0)


# --- augmentation presets: the `augmentation` config group points its `_target_` at one of these ---------


def none(image_size: int, resize_size: int) -> list[nn.Module]:
    """No augmentation: training images are preprocessed exactly like evaluation images."""
    return []


def basic(image_size: int, resize_size: int, hflip: float = 0.5, padding: int = 4) -> list[nn.Module]:
    """Random crop (with zero padding) and horizontal flip: the classic CIFAR recipe."""
    steps: list[nn.Module] = [v2.Resize(resize_size, antialias=True)]
    steps.append(v2.RandomCrop(image_size, padding=padding if resize_size == image_size else None))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    return steps


def standard(
    image_size: int,
    resize_size: int,
    scale: Sequence[float] = (0.35, 1.0),
    hflip: float = 0.5,
    jitter: float = 0.2,
) -> list[nn.Module]:
    """RandomResizedCrop, horizontal flip and colour jitter: the ImageNet training recipe."""
    steps: list[nn.Module] = [v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return steps


def randaugment(
    image_size: int, resize_size: int, num_ops: int = 2, magnitude: int = 9, hflip: float = 0.5
) -> list[nn.Module]:
    """`basic` followed by RandAugment (Cubuk et al., 2020)."""
    return basic(image_size, resize_size, hflip) + [v2.RandAugment(num_ops=num_ops, magnitude=magnitude)]


def trivialaugment(image_size: int, resize_size: int, hflip: float = 0.5) -> list[nn.Module]:
    """`basic` followed by TrivialAugmentWide (Müller and Hutter, 2021)."""
    return basic(image_size, resize_size, hflip) + [v2.TrivialAugmentWide()]


def autoaugment(
    image_size: int, resize_size: int, policy: str = "cifar10", hflip: float = 0.5
) -> list[nn.Module]:
    """`basic` followed by AutoAugment with a learned policy: imagenet, cifar10 or svhn."""
    policies = {p.value: p for p in v2.AutoAugmentPolicy}
    if policy not in policies:
        raise ValueError(
            f"augmentation.policy={policy!r} is not an AutoAugment policy; choose one of {sorted(policies)}"
        )
    return basic(image_size, resize_size, hflip) + [v2.AutoAugment(policies[policy])]


def train_transform(
    augmentation: AugmentationFactory,
    image_size: int,
    resize_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """The training pipeline: to uint8 tensor, the augmentation preset's steps, then scale and normalise."""
    steps = augmentation(image_size=image_size, resize_size=resize_size)
    # with no geometric steps of its own, a preset leaves resizing to Preprocess, as in evaluation
    return v2.Compose(
        [v2.ToImage(), *steps, Preprocess(image_size, resize_size, mean, std, resize=not steps)]
    )


def eval_transform(
    image_size: int, resize_size: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """The evaluation pipeline, identical to the one inside exported models."""
    return v2.Compose([v2.ToImage(), Preprocess(image_size, resize_size, mean, std)])
