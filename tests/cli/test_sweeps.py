"""Sweeps past the basic launcher: jobs side by side through Ray, Slurm's path through submitit's local
executor, and hyper-parameter search on Optuna with pruning, a best trial and a study that resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from cli.test_cli import QUIET, ROOT, run
from cnnlab.figures.sweep import plot_sweep, swept_values
from cnnlab.search import as_override, suggest

TRAIN = str(ROOT / "train.py")
TINY = [
    *QUIET,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "export=null",
]


def intervals(sweep: Path) -> list[tuple[datetime, datetime]]:
    spans = []
    for folder in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        status = json.loads((folder / "status.json").read_text())
        assert status["status"] == "completed", status
        spans.append((datetime.fromisoformat(status["started"]), datetime.fromisoformat(status["ended"])))
    return spans


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    return max(sum(start <= t < end for start, end in spans) for t, _ in spans)


@pytest.mark.slow
def test_ray_runs_two_jobs_at_a_time_on_two_cores(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run(
        TRAIN,
        "-m",
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        "seed=1,2,3,4",
        *TINY,
        # jobs of a few seconds: shorter ones can all finish on one worker before Ray's second one is up
        "trainer.max_epochs=8",
        "trainer.limit_train_batches=null",
        f"hydra.sweep.dir={sweep}",
    )
    spans = intervals(sweep)
    assert len(spans) == 4 and most_at_once(spans) == 2  # side by side, never more than the cores
    rows = (sweep / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and all(",completed," in row for row in rows[1:])


@pytest.mark.slow
def test_submitit_local_runs_a_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run(TRAIN, "-m", "hydra/launcher=submitit_local", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}")
    assert len(intervals(sweep)) == 2 and (sweep / ".submitit").is_dir()
    assert "| (defaults) | 2 |" in (sweep / "results.md").read_text()  # two seeds of one configuration


@pytest.mark.slow
def test_search_prunes_writes_best_yaml_and_resumes_its_study(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    args = [
        "-m",
        "hparams_search=digits_lr",
        *QUIET,
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=2",
        "export=null",
        "test=false",
        f"hydra.sweep.dir={sweep}",
    ]
    run(TRAIN, *args)
    states = [json.loads((sweep / str(i) / "status.json").read_text())["status"] for i in range(8)]
    assert "pruned" in states and "failed" not in states and not (sweep / "8").exists()
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    completed = [
        json.loads((sweep / str(i) / "metrics.json").read_text())["best/val/acc"]
        for i, s in enumerate(states)
        if s == "completed"
    ]
    assert best["value"] == pytest.approx(max(completed)) and best["command"].startswith("python train.py ")
    assert any(o.startswith("optimizer.lr=") for o in best["overrides"])
    report = (sweep / "results.md").read_text()
    assert (
        "## Trials of the search, best first" in report and (sweep / "plots" / "search_history.png").is_file()
    )
    # run again with a larger budget: the same study continues with two more trials, in new job folders
    run(TRAIN, *args, "hydra.sweeper.n_trials=10")
    import optuna

    study = optuna.load_study(study_name="digits_lr", storage=f"sqlite:///{sweep / 'study.db'}")
    assert len(study.trials) == 10 and (sweep / "9").is_dir() and not (sweep / "10").exists()


@pytest.mark.slow
def test_a_plain_run_imports_neither_ray_nor_submitit_nor_optuna(tmp_path: Path) -> None:
    code = (
        "import sys; from cnnlab.train import main\n"
        f"sys.argv = ['train.py', 'debug=fdr', 'hydra.run.dir={tmp_path}', *{QUIET!r}]\n"
        "main()\n"
        "print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'submitit', 'optuna'}))"
    )
    proc = run("-c", code)
    assert "loaded: []" in proc.stdout


def test_search_spaces_are_read_from_yaml_and_explained_when_wrong() -> None:
    import optuna

    trial = optuna.create_study().ask()
    assert (
        1e-4
        <= suggest(trial, "optimizer.lr", {"type": "float", "low": 1e-4, "high": 1e-1, "log": True})
        <= 0.1
    )
    assert suggest(trial, "model.widths", {"type": "categorical", "choices": ["[8,16]", "[16,32]"]}) in (
        "[8,16]",
        "[16,32]",
    )
    assert suggest(trial, "data.batch_size", {"type": "int", "low": 8, "high": 64, "step": 8}) % 8 == 0
    with pytest.raises(ValueError, match="type='uniform'.*float, int, categorical"):
        suggest(trial, "optimizer.lr", {"type": "uniform", "low": 0, "high": 1})
    with pytest.raises(ValueError, match=r"\['lower'\] are not fields of a float space"):
        suggest(trial, "optimizer.lr", {"type": "float", "lower": 0, "high": 1})
    assert as_override("model.widths", "[8,16]") == "model.widths='[8,16]'"
    assert as_override("model", "resnet") == "model=resnet" and as_override("test", False) == "test=false"


def test_sweep_plots_show_the_metric_against_each_swept_parameter(tmp_path: Path) -> None:
    jobs = [
        {
            "overrides": [f"optimizer.lr={lr}", f"model={model}", f"seed={seed}", "trainer.max_epochs=3"],
            "status": {"status": "completed"},
            "metrics": {"best/val/acc": acc},
        }
        for lr, model, seed, acc in [(0.001, "mlp", 1, 0.8), (0.01, "lenet", 2, 0.9), (0.1, "mlp", 3, 0.5)]
    ]
    assert set(swept_values(jobs)) == {"optimizer.lr", "model"}  # not the seed, not what every job shares
    plots = plot_sweep(tmp_path, jobs, "best/val/acc", higher=True)
    assert sorted(p.name for p in plots) == ["model.png", "optimizer.lr.png"]
    assert all(p.stat().st_size > 1000 for p in plots) and list((tmp_path / "tensorboard").glob("events.*"))


@pytest.mark.slow
def test_slurm_config_extends_the_submitit_plugin() -> None:
    proc = subprocess.run(
        [sys.executable, TRAIN, "hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    launcher = yaml.safe_load(proc.stdout)  # the hydra.launcher package alone
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["gpus_per_node"] == 1
