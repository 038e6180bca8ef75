"""scikit-learn's handwritten digits: 1,797 real 8x8 scans shipped inside the package, the offline default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from cnnlab.data.base import ImageDataModule, TensorImages


class DigitsDataModule(ImageDataModule):
    """Digit classes, one channel, upsampled from 8 px to ``image_size``; a fixed, seeded test split.

    ``classes`` keeps some digits only (relabelled 0..k-1 in the given order) and ``train_per_class`` draws
    that many training images per class (with the run's seed, so seeds are different draws): together they
    make the small target tasks of transfer experiments. ``canvas`` places every 8 px scan at a random
    position on a blank square of that many pixels, the same position in every run: "translated digits",
    a harder variant on which features learnt elsewhere pay off.
    """

    def __init__(
        self,
        test_fraction: float = 0.2,
        classes: Sequence[int] | None = None,
        train_per_class: int | None = None,
        canvas: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("num_classes", len(classes) if classes else 10)
        kwargs.setdefault("in_channels", 1)
        super().__init__(**kwargs)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        self.classes = [int(c) for c in classes] if classes else list(range(10))
        if len(set(self.classes)) != len(self.classes) or not set(self.classes) <= set(range(10)):
            raise ValueError(f"data.classes={list(classes or [])}: give distinct digits from 0 to 9")
        if train_per_class is not None and train_per_class < 2:
            raise ValueError(
                f"data.train_per_class={train_per_class}: give at least 2 (one may go to validation)"
            )
        if canvas is not None and canvas < 8:
            raise ValueError(f"data.canvas={canvas}: the scans are 8 px, give a canvas of 8 px or more")
        self.test_fraction, self.train_per_class, self.canvas = test_fraction, train_per_class, canvas
        self._pool: dict[str, Dataset] = {}

    def load_split(self, split: str) -> Dataset:
        if not self._pool:
            self._pool = self._load()
        return self._pool[split]

    def _load(self) -> dict[str, Dataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # the scans have 17 grey levels (0..16); stretch them to the uint8 range real images use
        images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
        if self.canvas is not None:
            images = place_on_canvas(images, self.canvas)
        relabel = torch.full((10,), -1, dtype=torch.long)
        relabel[self.classes] = torch.arange(len(self.classes))
        labels = relabel[torch.from_numpy(digits.target).long()]
        self._set_class_names([str(c) for c in self.classes])
        full = TensorImages(images, labels)
        # the test split is fixed (seed 0) whatever the run's seed, so every run is scored on the same images
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))
        order = order[labels[order] >= 0]
        n_test = int(round(len(order) * self.test_fraction))
        test, train = order[:n_test], order[n_test:]
        if self.train_per_class is not None:
            draw = torch.Generator().manual_seed(self.seed)
            picked = []
            for k in range(len(self.classes)):
                members = train[labels[train] == k]
                picked.append(members[torch.randperm(len(members), generator=draw)[: self.train_per_class]])
            train = torch.cat(picked)
        return {"train": Subset(full, train.tolist()), "test": Subset(full, test.tolist())}


def place_on_canvas(images: torch.Tensor, size: int) -> torch.Tensor:
    """Each (1, h, w) image of a uint8 batch at a random position on a blank ``size`` px square.

    The positions come from a fixed generator: the same image lands at the same place in every run.
    """
    n, _, h, w = images.shape
    out = torch.zeros(n, 1, size, size, dtype=images.dtype)
    generator = torch.Generator().manual_seed(0)
    tops = torch.randint(0, size - h + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(0, size - w + 1, (n,), generator=generator).tolist()
    for i, (top, left) in enumerate(zip(tops, lefts, strict=True)):
        out[i, :, top : top + h, left : left + w] = images[i]
    return out
