"""MixUp and CutMix: batch-level augmentation that blends images and turns labels into class probabilities.

Both need a whole batch (each image is mixed with another of the batch), so they run in the training loader's
``collate_fn``, after the per-image augmentation preset; validation and test batches are never mixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor
from torch.utils.data import default_collate
from torchvision.transforms import v2

#: the keys of the ``mix`` config block
MIX_KEYS = ("mixup_alpha", "cutmix_alpha")


class MixCollate:
    """Collates (image, label) items into a batch, then applies MixUp, CutMix or a random one of the two."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        for key, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if alpha < 0:
                raise ValueError(f"mix.{key}={alpha}: alpha must be >= 0 (0 turns it off)")
        mixes: list[v2.Transform] = []
        if mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not mixes:
            raise ValueError("mix: set mixup_alpha or cutmix_alpha above 0, or use no mixing at all")
        # one of the two per batch, with equal chance, as in torchvision's reference training script
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __call__(self, items: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        images, labels = default_collate(items)
        return self.mix(images, labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mix})"


def mix_collate(num_classes: int, mix: Mapping[str, Any] | None) -> Callable[[list[Any]], Any] | None:
    """The training ``collate_fn`` for a ``mix`` config block, or None when it mixes nothing."""
    if not mix:
        return None
    unknown = sorted(set(mix) - set(MIX_KEYS))
    if unknown:
        raise ValueError(f"mix: unknown keys {unknown}; the valid keys are {list(MIX_KEYS)}")
    alphas = {key: float(mix.get(key) or 0.0) for key in MIX_KEYS}
    if all(alpha == 0 for alpha in alphas.values()):
        return None
    return MixCollate(num_classes, **alphas)
