"""scikit-learn's handwritten digits: 1,797 real 8x8 scans shipped inside the package, the offline default."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from cnnlab.data.base import ImageClassificationDataModule


class DigitsDataModule(ImageClassificationDataModule):
    """Ten digit classes, one channel, upsampled from 8 px to ``image_size``; a fixed, seeded test split."""

    def __init__(self, test_fraction: float = 0.2, **kwargs: Any) -> None:
        kwargs.setdefault("num_classes", 10)
        kwargs.setdefault("in_channels", 1)
        super().__init__(**kwargs)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        self.test_fraction = test_fraction
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
        labels = torch.from_numpy(digits.target).long()
        self._set_class_names([str(int(n)) for n in digits.target_names])
        full = TensorDataset(images, labels)
        # the test split is fixed (seed 0) whatever the run's seed, so every run is scored on the same images
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
        n_test = int(round(len(full) * self.test_fraction))
        return {"train": Subset(full, order[n_test:]), "test": Subset(full, order[:n_test])}
