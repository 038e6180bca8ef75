"""The command-line tests' shared run: one `python train.py` per test run, read by several modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from once import built_once

from cli.test_cli import QUIET, ROOT, run


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python train.py` for two epochs, through the real entry point (exported in every format)."""

    def build(folder: Path) -> None:
        run(str(ROOT / "train.py"), "trainer.max_epochs=2", f"hydra.run.dir={folder / 'run'}", *QUIET)

    return built_once(tmp_path_factory, "cli", build) / "run"
