"""Sweep plots: the optimised metric against each parameter the jobs varied, as PNGs and in TensorBoard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # off screen: the package draws without a window (cnnlab.figures)

#: keys that vary between jobs without being a parameter worth a plot
NOT_PARAMETERS = ("seed",)


def swept_values(jobs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each override key whose value differs between completed jobs, with every job's value (in job order)."""
    done = [j for j in jobs if j["status"]["status"] == "completed"]
    per_job = [dict(o.lstrip("+~").split("=", 1) for o in j["overrides"] if "=" in o) for j in done]
    keys = {k for values in per_job for k in values} - set(NOT_PARAMETERS)
    return {
        key: [values.get(key, "") for values in per_job]
        for key in sorted(keys)
        if len({values.get(key) for values in per_job}) > 1
    }


def plot_sweep(sweep_dir: Path, jobs: list[dict[str, Any]], metric: str | None, higher: bool) -> list[Path]:
    """One plot per swept parameter of ``metric`` (best first up the axis); returns the PNGs written."""
    if metric is None:
        return []
    done = [j for j in jobs if j["status"]["status"] == "completed"]
    scores = [j["metrics"].get(metric) for j in done]
    written = []
    for key, values in swept_values(jobs).items():
        pairs = [(v, s) for v, s in zip(values, scores, strict=True) if isinstance(s, (int, float))]
        if len(pairs) < 2:
            continue
        fig = parameter_figure(key, pairs, metric, higher)
        written.append(
            save(fig, sweep_dir / "plots" / f"{key.replace('/', '_')}.png", sweep_dir, f"sweep/{key}")
        )
    return written


def parameter_figure(key: str, pairs: list[tuple[str, float]], metric: str, higher: bool) -> plt.Figure:
    """The metric against one parameter: a scatter on a (log) number line, or one column per category."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        xs = [float(v) for v, _ in pairs]
        positive = min(xs) > 0
        if positive and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.scatter(xs, [s for _, s in pairs])
    except ValueError:  # categories: models, optimisers, presets
        categories = sorted({v for v, _ in pairs})
        ax.scatter([categories.index(v) for v, _ in pairs], [s for _, s in pairs])
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=8)
    ax.set(xlabel=key, ylabel=f"{metric} ({'higher' if higher else 'lower'} is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: Path, sweep_dir: Path, tag: str) -> Path:
    """Write ``fig`` to ``path`` (whole or not at all) and to the sweep's TensorBoard folder; close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(partial, dpi=110)
    partial.replace(path)
    try:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(sweep_dir / "tensorboard")) as writer:
            writer.add_figure(tag, fig, close=False)
    finally:
        plt.close(fig)
    return path
