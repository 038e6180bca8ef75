"""Run folders: where a run's files live, finding the latest, reopening one to resume, metrics.json."""

from __future__ import annotations

import json
import math
import shlex
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

LAST_CKPT = Path("checkpoints") / "last.ckpt"


def runs_dir(argv: Sequence[str]) -> Path:
    """Where single runs live: ``<paths.output_root>/train/runs``, the root as the command line sets it."""
    from hydra import compose, initialize_config_dir

    from cnnlab import CONF_DIR

    overrides = [a for a in argv if not a.startswith(("resume=", "hydra.", "-"))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        root = compose("train", overrides=overrides).paths.output_root
    return Path(str(root)).expanduser() / "train" / "runs"


def find_run(spec: str, runs_dir: Path) -> Path:
    """The run folder named by ``spec``: a path, or ``latest`` for the newest run under ``runs_dir``.

    The newest run is the one resumed; when it cannot be (it stopped before its first checkpoint), the error
    names it and the newest run that could be resumed, instead of continuing an older, different run.
    """
    if spec == "latest":
        folders = sorted((p for p in runs_dir.glob("*") if p.is_dir()), key=lambda p: p.name)
        if not folders:
            raise FileNotFoundError(f"resume=latest: there is no run under {runs_dir}/ to resume")
        newest = folders[-1]
        if not (newest / LAST_CKPT).is_file():
            resumable = [p for p in folders if (p / LAST_CKPT).is_file()]
            other = (
                f"; the newest run that can be resumed is {resumable[-1]}: resume={resumable[-1]}"
                if resumable
                else "; no run there has one"
            )
            raise FileNotFoundError(
                f"resume=latest: the newest run, {newest}, has no {LAST_CKPT} (it stopped before its first "
                f"epoch ended), so there is nothing to continue{other}"
            )
        return newest
    run = Path(spec).expanduser()
    if not (run / LAST_CKPT).is_file():
        raise FileNotFoundError(
            f"resume={spec}: {run / LAST_CKPT} does not exist; give a run folder of train.py"
        )
    return run


def resume_overrides(argv: Sequence[str], runs: Path | None = None) -> list[str]:
    """Rewrite ``resume=<run|latest>`` into the run's own overrides, its folder and its last checkpoint.

    The run's saved overrides come first so the resumed run has the same config; any other argument
    given now (``trainer.max_epochs=20``) follows and wins.
    """
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if spec is None or spec in ("null", ""):
        return list(argv)
    run = find_run(spec, runs if runs is not None else runs_dir(argv)).resolve()
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
    return kept + rest + [f"hydra.run.dir={quoted(run)}", f"ckpt_path={quoted(run / LAST_CKPT)}"]


def quoted(value: Any) -> str:
    """A path or value as an override's value: Hydra's grammar reads commas, spaces and brackets as syntax."""
    text = str(value)
    return repr(text) if any(c in text for c in ",[]{}()= '\"") else text


def write_status(folder: Path, status: str, **fields: Any) -> dict[str, Any]:
    """Update the run's ``status.json``: its state (running, completed, failed, interrupted) and details."""
    path = folder / "status.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    record.update(status=status, **fields)
    if status != "failed":
        record.pop("error", None)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def resume_command(run: Path) -> str:
    """The command that continues ``run`` from its last checkpoint."""
    return f"python train.py resume={shlex.quote(str(run))}"


def drop_empty_tensorboard(run: Path) -> None:
    """Remove the run's TensorBoard folder when nothing was logged in it: dashboards list real runs only."""
    folder = run / "tensorboard"
    events = list(folder.rglob("events.out.tfevents.*")) if folder.is_dir() else []
    # an event file holds a ~90-byte header before its first summary
    if folder.is_dir() and all(e.stat().st_size < 200 for e in events):
        shutil.rmtree(folder, ignore_errors=True)


def write_bad_files(output_dir: Path, bad: Sequence[tuple[str, str]]) -> None:
    """List the files the data left out, one per line with its reason, in ``bad_files.txt``."""
    if bad:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "bad_files.txt").write_text("".join(f"{path}\t{reason}\n" for path, reason in bad))


def save_config(cfg: Any, output_dir: Path) -> None:
    """Rewrite the run's ``.hydra/config.yaml`` with what the run settled (normalisation, a found lr)."""
    path = output_dir / ".hydra" / "config.yaml"
    if path.parent.is_dir():
        OmegaConf.save(cfg, path)


def to_number(value: Any) -> float:
    """A plain float from a tensor or number (NaN stays NaN)."""
    return float(value.item() if hasattr(value, "item") else value)  # a tensor (or numpy scalar)


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


def run_folders(root: Path) -> list[Path]:
    """The run folders under ``root``, oldest first: each holds ``.hydra/config.yaml``, ``status.json`` or a
    run's ``metrics.json`` (one that names its optimised metric)."""
    found = {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    found |= {p.parent for p in root.rglob("status.json")}
    found |= {p.parent for p in root.rglob("metrics.json") if "optimized_metric" in read_json(p)}
    return sorted(found, key=lambda folder: (started(folder), str(folder)))


def choices(run: Path) -> dict[str, str]:
    """The option each config group took in a run (``model: resnet``), from its ``.hydra/hydra.yaml``."""
    path = run / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    picked = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices", default=None) or {}
    return {str(k): str(v) for k, v in picked.items() if not str(k).startswith("hydra") and v is not None}


def started(run: Path) -> str:
    """When a run started (``status.json``), else when it last wrote its metrics or its folder: ISO 8601."""
    when = read_json(run / "status.json").get("started")
    if when:
        return str(when)
    stamped = run / "metrics.json" if (run / "metrics.json").is_file() else run
    return datetime.fromtimestamp(stamped.stat().st_mtime).isoformat(timespec="milliseconds")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of a run (metrics.json, status.json); empty when missing, partial or foreign."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
