"""What no job of a sweep could survive is refused before the first job starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.test_cli import QUIET, ROOT, run

# each case starts train.py (seconds of imports): the swept ones run with the slow tests
SWEEPS = [
    "trainer=ddp_sim",
    pytest.param("trainer=default,ddp_sim", marks=pytest.mark.slow),
    pytest.param("trainer.strategy=auto,ddp", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("trainers", SWEEPS)
def test_ddp_in_a_sweep_is_refused_before_any_job(trainers: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run(
        str(ROOT / "train.py"), "-m", trainers, "debug=fdr", f"hydra.sweep.dir={sweep}", *QUIET, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("cnnlab: trainer.strategy=ddp inside a multirun (-m)")
    assert "Traceback" not in proc.stderr and not sweep.exists()  # no job was launched
