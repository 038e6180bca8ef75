"""Try typical config typos as a new user would and time cnnlab's answer to each.

    python scripts/config_typos.py

Runs ``python train.py <typo>`` for each, checks that it fails with one paragraph starting ``cnnlab:`` (or
Hydra's own message for an unknown option) and no traceback, and prints the seconds each took to answer.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TYPOS = [
    "trainer.max_epochs=abc",
    "data.batch_size=0",
    "data.batch_size=-1",
    "seed=-1",
    "optimized_metric=val/accuracy",
    "optimizer.lr=-0.1",
    "data.val_fraction=1.5",
    "trainer.precision=15",
    "model=resnet18",
    "trainer.max_epoch=5",
]


def main() -> None:
    """Command line: one line per typo: seconds, exit code, the message's first line."""
    failures = 0
    with tempfile.TemporaryDirectory() as out:
        for typo in TYPOS:
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, str(ROOT / "train.py"), typo, f"hydra.run.dir={out}/run"],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            seconds = time.perf_counter() - started
            console = proc.stdout + proc.stderr
            clean = proc.returncode != 0 and "Traceback" not in console
            failures += not clean
            lines = [ln for ln in console.splitlines() if ln.strip()]
            first = next((ln for ln in lines if ln.startswith("cnnlab:")), lines[0] if lines else "")
            verdict = "ok " if clean else "BAD"
            print(f"{seconds:5.1f} s  exit {proc.returncode}  {verdict}  {typo:32} {first[:100]}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
