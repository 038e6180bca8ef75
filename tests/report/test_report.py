"""Sweep tables from run folders: per job, mean +/- std over seeds, failed jobs with their re-run command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.report import read_jobs, summarize, write_report


def fake_job(sweep: Path, num: int, overrides: list[str], status: str, acc: float | None = None) -> None:
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    record = {"status": status} if status == "completed" else {"status": status, "error": "ValueError: bad"}
    (folder / "status.json").write_text(json.dumps(record))
    if acc is not None:
        (folder / "metrics.json").write_text(json.dumps({"test/acc": acc, "val/acc": acc - 0.01}))


def test_tables_average_seeds_and_list_failures(tmp_path: Path) -> None:
    fake_job(tmp_path, 0, ["model=mlp", "seed=1"], "completed", 0.90)
    fake_job(tmp_path, 1, ["model=mlp", "seed=2"], "completed", 0.80)
    fake_job(tmp_path, 2, ["model=lenet", "seed=1"], "failed")
    fake_job(tmp_path, 3, ["model=lenet", "seed=2"], "completed", 0.95)
    rows = {r["config"]: r for r in summarize(read_jobs(tmp_path))}
    assert rows["model=mlp"]["runs"] == 2
    assert rows["model=mlp"]["test/acc"] == pytest.approx((0.85, 0.05))
    assert rows["model=lenet"]["runs"] == 1
    text = write_report(tmp_path).read_text()
    assert "| 2 | failed | model=lenet seed=1 |" in text
    assert "python train.py model=lenet seed=1" in text.split("Re-run only these:")[1]
    csv_rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and csv_rows[3].startswith("2,failed,")


def test_a_sweep_without_jobs_gives_empty_tables(tmp_path: Path) -> None:
    text = write_report(tmp_path).read_text()
    assert "Failed jobs" not in text and (tmp_path / "results.csv").read_text().startswith("job,status")
