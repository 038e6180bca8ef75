"""The app tests' shared run: one trained classifier per test process, served by the API and browser tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.test_api import train


@pytest.fixture(scope="session")
def classifier_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default classifier (simple_cnn on digits, 10 classes) after two epochs, as the .pt2 the app
    prefers (every format's loading is tested in tests/serving)."""
    return train(
        tmp_path_factory.mktemp("app") / "classifier", "trainer.max_epochs=2", "export.formats=[pt2]"
    )
