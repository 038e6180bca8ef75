"""MixUp and CutMix: batch-level augmentation that blends images and turns labels into class probabilities.

Both need a whole batch (each image is mixed with another of the batch), so they run on training batches
after the per-image augmentation preset (the task that uses them applies them once a batch is on its device);
validation and test batches are never mixed.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.transforms import v2


class BatchMix:
    """Applies MixUp, CutMix or a random one of the two to a batch of images and class indices."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        for key, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if alpha < 0:
                raise ValueError(f"task.{key}={alpha}: alpha must be >= 0 (0 turns it off)")
        mixes: list[v2.Transform] = []
        if mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not mixes:
            raise ValueError("task: set mixup_alpha or cutmix_alpha above 0, or use no mixing at all")
        # one of the two per batch, with equal chance, as in torchvision's reference training script
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return self.mix(images, labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mix})"


def batch_mix(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> BatchMix | None:
    """The batch mixer for these alphas, or None when both are 0."""
    if not mixup_alpha and not cutmix_alpha:
        return None
    return BatchMix(num_classes, float(mixup_alpha), float(cutmix_alpha))
