"""The API sets Hydra's runtime config for the process, as a notebook needs: each test leaves none behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hydra.core.hydra_config import HydraConfig


@pytest.fixture(autouse=True)
def no_hydra_runtime_left() -> Iterator[None]:
    yield
    HydraConfig.instance().cfg = None
