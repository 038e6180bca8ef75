"""Run folders: where a run's files live, finding the latest, reopening one to resume, metrics.json."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

RUNS_DIR = Path("outputs") / "train" / "runs"
LAST_CKPT = Path("checkpoints") / "last.ckpt"


def find_run(spec: str, runs_dir: Path = RUNS_DIR) -> Path:
    """The run folder named by ``spec``: a path, or ``latest`` for the newest run with a last checkpoint."""
    if spec == "latest":
        candidates = sorted((p.parent.parent for p in runs_dir.glob(f"*/{LAST_CKPT}")), key=lambda p: p.name)
        if not candidates:
            raise FileNotFoundError(
                f"resume=latest: no run under {runs_dir}/ has a {LAST_CKPT} to resume from"
            )
        return candidates[-1]
    run = Path(spec).expanduser()
    if not (run / LAST_CKPT).is_file():
        raise FileNotFoundError(
            f"resume={spec}: {run / LAST_CKPT} does not exist; give a run folder of train.py"
        )
    return run


def resume_overrides(argv: Sequence[str], runs_dir: Path = RUNS_DIR) -> list[str]:
    """Rewrite ``resume=<run|latest>`` into the run's own overrides, its folder and its last checkpoint.

    The run's saved overrides come first so the resumed run has the same config; any other argument
    given now (``trainer.max_epochs=20``) follows and wins.
    """
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if spec is None or spec in ("null", ""):
        return list(argv)
    run = find_run(spec, runs_dir).resolve()
    saved = (
        OmegaConf.load(run / ".hydra" / "overrides.yaml")
        if (run / ".hydra" / "overrides.yaml").is_file()
        else []
    )
    rest = [a for a in argv if not a.startswith("resume=")]
    keys = {a.split("=", 1)[0].lstrip("+~") for a in rest}
    kept = [
        str(o) for o in saved if str(o).split("=", 1)[0].lstrip("+~") not in keys | {"resume", "ckpt_path"}
    ]
    return kept + rest + [f"hydra.run.dir={shlex.quote(str(run))}", f"ckpt_path={run / LAST_CKPT}"]


def to_number(value: Any) -> float:
    """A plain float from a tensor or number (NaN stays NaN)."""
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def write_metrics(
    path: Path, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write final metrics (and extra fields) as sorted JSON; returns what was written."""
    record: dict[str, Any] = {k: to_number(v) for k, v in sorted(metrics.items())}
    record = {k: (None if math.isnan(v) else v) for k, v in record.items()}
    record.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record
