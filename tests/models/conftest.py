"""Fixtures of the model tests: one thread for their small tensors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run on one thread: a few small images gain nothing from more, and two contending threads per pytest
    worker (``-n 2`` on two cores) make them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
