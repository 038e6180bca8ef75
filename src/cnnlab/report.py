"""Sweep reports: every job's status, and a table of a multirun's results (read from run folders only).

A Hydra callback (``conf/hydra/default.yaml``) writes ``status.json`` into each job's folder and, when a sweep
ends, ``results.csv`` and ``results.md`` into the sweep folder: one row per job, then one row per
configuration with the mean +/- std over seeds, and the command that re-runs only the failed jobs. A search's
folder also gets its trials, best first, and its history and importance plots, read from the study it keeps
(``study.db``): the report reads search results and never needs the search module, which calls it.
``python -m cnnlab.report SWEEP_DIR`` writes the same tables again at any time.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnnlab import runs
from cnnlab.errors import CnnlabError, RunInterrupted
from cnnlab.figures.sweep import plot_sweep

#: where an Optuna search keeps its study, in the sweep folder (SQLite)
STUDY_FILE = "study.db"
#: at most this many test metrics in the tables, after the optimised one (per-class figures stay in the jobs)
MAX_TEST_COLUMNS = 6


class SweepReport(Callback):
    """Hydra callback: ``status.json`` per job (with start and end times), results tables per sweep."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # what no job of the sweep could survive is refused before the first one starts
        from cnnlab.config import sweep_problem

        problem = sweep_problem(config)
        if problem:
            print(f"cnnlab: {problem}", file=sys.stderr)
            sys.exit(2)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
        folder = Path(config.hydra.runtime.output_dir)
        runs.write_status(folder, "running", started=_now(), overrides=list(config.hydra.overrides.task))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":  # DDP's other processes share rank 0's folder
            return
        fields: dict[str, Any] = {"ended": _now(), "overrides": list(job_return.overrides or [])}
        state = job_return.status.name.lower()
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            message = (
                " ".join(str(error).split())
                if isinstance(error, CnnlabError)
                else (
                    " ".join(f"{type(error).__name__}: {error}".split())  # one line, for the tables
                )
            )
            state = "interrupted" if isinstance(error, RunInterrupted) else "failed"
            if type(error).__name__ == "TrialPruned":  # an Optuna search stopped this trial on purpose
                state = "pruned"
            fields["error" if state == "failed" else "reason"] = message
            if config.hydra.mode == RunMode.MULTIRUN:
                # one line as it fails; Hydra's own account comes when the whole sweep has run
                print(f"[cnnlab] job {config.hydra.job.num} {state}: {message}", file=sys.stderr, flush=True)
        elif isinstance(job_return._return_value, (int, float)):
            fields[str(config.get("optimized_metric"))] = float(job_return._return_value)
        runs.write_status(Path(config.hydra.runtime.output_dir), state, **fields)
        if config.hydra.mode == RunMode.MULTIRUN:
            # after every job, not at the sweep's end: Hydra skips on_multirun_end when a job failed
            write_report(Path(config.hydra.sweep.dir))


def _now() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per job folder: its number, overrides, status and final metrics."""
    jobs = []
    for folder in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    ):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
        # where a search's trial reports to its study: the sweeper's business, not the job's configuration
        overrides = [o for o in overrides if not o.startswith("+search.")]
        status_file, metrics_file = folder / "status.json", folder / "metrics.json"
        status = json.loads(status_file.read_text()) if status_file.is_file() else {"status": "unknown"}
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        jobs.append({"job": int(folder.name), "overrides": overrides, "status": status, "metrics": metrics})
    return jobs


def _config_key(overrides: list[str], common: set[str] = frozenset()) -> str:
    kept = [o for o in overrides if not o.startswith("seed=") and o not in common]
    return " ".join(kept) or "(defaults)"


def common_overrides(jobs: list[dict[str, Any]]) -> list[str]:
    """The overrides every job of the sweep shares (shown once, not in every row)."""
    if len(jobs) < 2:
        return []
    shared = set(jobs[0]["overrides"]).intersection(*(set(j["overrides"]) for j in jobs[1:]))
    return [o for o in jobs[0]["overrides"] if o in shared]


def columns(jobs: list[dict[str, Any]]) -> list[str]:
    """The optimised metric (its best value), then the test metrics the jobs report, as table columns."""
    optimized = sorted({j["metrics"]["optimized_metric"] for j in jobs if "optimized_metric" in j["metrics"]})
    found = sorted(
        {k for j in jobs for k, v in j["metrics"].items() if k.startswith("test/") and isinstance(v, float)}
    )
    return [f"best/{m}" for m in optimized] + found[:MAX_TEST_COLUMNS]


def ranking(jobs: list[dict[str, Any]]) -> tuple[str | None, bool]:
    """The column sweeps are ranked by and whether higher is better, from the jobs' metrics.json."""
    for job in jobs:
        metrics = job["metrics"]
        if "optimized_metric" in metrics:
            return f"best/{metrics['optimized_metric']}", metrics.get("optimized_mode", "max") == "max"
    return None, True


def summarize(jobs: list[dict[str, Any]], cols: list[str] | None = None) -> list[dict[str, Any]]:
    """Completed jobs grouped by overrides without ``seed``: mean and std of every column, best first."""
    cols = columns(jobs) if cols is None else cols
    common = set(common_overrides(jobs))
    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        if job["status"]["status"] == "completed":
            groups.setdefault(_config_key(job["overrides"], common), []).append(job["metrics"])
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = {"config": key, "runs": len(members)}
        for column in cols:
            values = [r[column] for r in members if isinstance(r.get(column), (int, float))]
            if values:
                row[column] = (statistics.mean(values), statistics.pstdev(values))
        rows.append(row)
    rank_by, higher = ranking(jobs)
    if rank_by is not None:
        missing = float("-inf") if higher else float("inf")
        rows.sort(key=lambda r: r[rank_by][0] if rank_by in r else missing, reverse=higher)
    return rows


def write_report(sweep_dir: Path) -> Path:
    """Write ``results.csv`` (one row per job) and ``results.md`` (per job, per configuration, failures)."""
    jobs = read_jobs(sweep_dir)
    cols = columns(jobs)
    csv_text = io.StringIO()
    writer = csv.writer(csv_text)
    writer.writerow(["job", "status", "overrides", *cols])
    for job in jobs:
        cells = [job["metrics"].get(c, "") for c in cols]
        writer.writerow([job["job"], job["status"]["status"], " ".join(job["overrides"]), *cells])
    common = common_overrides(jobs)
    lines = [f"# Sweep {sweep_dir.name}", ""]
    if common:
        lines += [f"Every job: `{' '.join(common)}`", ""]
    lines += [
        "| job | status | overrides | " + " | ".join(cols) + " |",
        "|---" * (3 + len(cols)) + "|",
    ]
    for job in jobs:
        cells = [_fmt(job["metrics"].get(c)) for c in cols]
        lines.append(
            f"| {job['job']} | {job['status']['status']} | "
            + (" ".join(o for o in job["overrides"] if o not in common) or "(defaults)")
            + " | "
            + " | ".join(cells)
            + " |"
        )
    rank_by, higher = ranking(jobs)
    order = f", best first by {rank_by} ({'higher' if higher else 'lower'} is better)" if rank_by else ""
    lines += [
        "",
        f"## Mean +/- std over seeds{order}",
        "",
        "| config | runs | " + " | ".join(cols) + " |",
        "|---" * (2 + len(cols)) + "|",
    ]
    for row in summarize(jobs, cols):
        # a spread needs more than one run: a single seed shows its value alone
        cells = [
            (f"{row[c][0]:.4f} +/- {row[c][1]:.4f}" if row["runs"] > 1 else f"{row[c][0]:.4f}")
            if c in row
            else ""
            for c in cols
        ]
        lines.append(f"| {row['config']} | {row['runs']} | " + " | ".join(cells) + " |")
    failed = [job for job in jobs if job["status"]["status"] in ("failed", "interrupted")]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- job {j['job']}: {j['status'].get('error', j['status']['status'])}" for j in failed]
        lines += ["", "Re-run only these:", ""]
        lines += [f"    python train.py {' '.join(j['overrides'])}" for j in failed]
    plots = plot_sweep(sweep_dir, jobs, rank_by, higher)
    if (sweep_dir / STUDY_FILE).is_file():  # an Optuna search: its trials best first, its history
        lines += ["", "## Trials of the search, best first", "", *trials_table(sweep_dir)]
        plots += plot_study(sweep_dir)
    if plots:
        lines += ["", "## Plots", "", *(f"![{p.stem}]({p.relative_to(sweep_dir)})" for p in plots)]
    _write_atomic(sweep_dir / "results.csv", csv_text.getvalue())
    path = sweep_dir / "results.md"
    _write_atomic(path, "\n".join(lines) + "\n")
    return path


def load_study(sweep_dir: Path) -> Any:
    """The study kept in a sweep folder."""
    import optuna

    storage = f"sqlite:///{sweep_dir / STUDY_FILE}"
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)


def trials_table(sweep_dir: Path) -> list[str]:
    """Markdown lines listing the study's trials, best first: number, state, value and values drawn."""
    import optuna

    study = load_study(sweep_dir)
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(trials, key=lambda t: (t.value is None, -(t.value or 0) if higher else (t.value or 0)))
    lines = ["| trial | state | value | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for t in ranked:
        value = f"{t.value:.4f}" if t.value is not None else ""
        cells = [
            f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, ""))
            for k in keys
        ]
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | " + " | ".join(cells) + " |")
    return lines


def plot_study(sweep_dir: Path) -> list[Path]:
    """The search's history (each trial's value and the best so far) and its parameters' importances."""
    import matplotlib.pyplot as plt
    import optuna

    from cnnlab.figures.sweep import save

    study = load_study(sweep_dir)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return []
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    values = [t.value for t in done]
    best = [max(values[: i + 1]) if higher else min(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([t.number for t in done], values, label="trial")
    ax.step([t.number for t in done], best, where="post", color="red", label="best so far")
    ax.set(xlabel="trial", ylabel="value", title=f"search history ({study.direction.name.lower()})")
    ax.legend()
    fig.tight_layout()
    paths = [save(fig, sweep_dir / "plots" / "search_history.png", sweep_dir, "search/history")]
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # too few completed trials, or a single value everywhere
        return paths
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (fANOVA)", title="which parameters mattered")
    fig.tight_layout()
    paths.append(save(fig, sweep_dir / "plots" / "search_importances.png", sweep_dir, "search/importances"))
    return paths


def _write_atomic(path: Path, text: str) -> None:
    # the jobs of a parallel sweep finish at the same time and each rewrites the tables
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""


def main() -> None:
    """Command line: write the tables of a sweep folder."""
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m cnnlab.report SWEEP_DIR (a folder under outputs/multirun/)")
    print(write_report(Path(sys.argv[1])).read_text())


if __name__ == "__main__":
    main()
