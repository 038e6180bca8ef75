"""Fixtures of the pipeline tests: every dataset's real on-disk format, small."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakedata import write_cifar10, write_image_folder, write_landmarks, write_mnist


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small files in every dataset's real on-disk format, under the folder names the data configs use."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "mnist", n_train=40, n_test=10)
    write_mnist(root / "fashion_mnist", n_train=40, n_test=10, fashion=True)
    write_cifar10(root / "cifar10", n_train_per_batch=8, n_test=10)
    write_image_folder(root / "folder", ["cat", "dog", "fox"], n_per_class=6)
    write_landmarks(root / "landmarks", n_classes=3, n_per_class=6)
    return root
