"""The app tests' shared run: one trained classifier per test run, served by the API and browser tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from once import built_once

from app.test_api import train


@pytest.fixture(scope="session")
def classifier_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default classifier (simple_cnn on digits, 10 classes) after two epochs, as the .pt2 the app
    prefers (every format's loading is tested in tests/serving)."""

    def build(folder: Path) -> None:
        train(folder / "classifier", "trainer.max_epochs=2", "export.formats=[pt2]")

    return built_once(tmp_path_factory, "app", build) / "classifier" / "export"
