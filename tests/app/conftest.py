"""The app tests' shared run: the command-line tests' classifier, served by the API and browser tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def classifier_export(cli_run: Path) -> Path:
    """The default classifier (simple_cnn on digits, 10 classes) after four epochs, exported in every format;
    the app serves the .pt2 of them (tests/conftest.py trains it once per test run)."""
    return cli_run / "export"
