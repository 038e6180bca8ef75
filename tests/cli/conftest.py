"""The command-line tests' shared run: one `python train.py` per test process, read by several modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.test_cli import QUIET, ROOT, run


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python train.py` for two epochs, through the real entry point (exported in every format)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    run(str(ROOT / "train.py"), "trainer.max_epochs=2", f"hydra.run.dir={out}", *QUIET)
    return out
