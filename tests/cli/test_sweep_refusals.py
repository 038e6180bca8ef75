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


@pytest.mark.slow
@pytest.mark.parametrize("trainers", SWEEPS)
def test_ddp_in_a_sweep_is_refused_before_any_job(trainers: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run(
        str(ROOT / "train.py"), "-m", trainers, "debug=fdr", f"hydra.sweep.dir={sweep}", *QUIET, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("cnnlab: trainer.strategy=ddp inside a multirun (-m)")
    assert "Traceback" not in proc.stderr and not sweep.exists()  # no job was launched


# refused in the sweep's process before any job: through the command line, then the sweep callback alone
BAD_SWEEPS = {
    "a search space of an unknown type": (
        [
            "hparams_search=digits_lr",
            "hydra.sweeper.params={optimizer.lr: {type: floot, low: 0.001, high: 0.1}}",
        ],
        "cnnlab: hydra.sweeper.params.optimizer.lr: type='floot'; choose one of float, int, categorical",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_SWEEPS)
def test_a_sweep_no_job_could_run_is_refused_before_any_job(case: str, tmp_path: Path) -> None:
    overrides, message = BAD_SWEEPS[case]
    sweep = tmp_path / "sweep"
    proc = run(str(ROOT / "train.py"), "-m", *overrides, f"hydra.sweep.dir={sweep}", *QUIET, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not sweep.exists()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"type": "float", "low": 0.1, "high": 0.01}, "low=0.1, high=0.01: give numbers with low < high"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "and low > 0 with log: true"),
        ({"type": "int", "low": 1, "high": 8, "choices": [1]}, "['choices'] are not fields of a int space"),
        ({"type": "categorical", "choices": []}, "a categorical space needs choices"),
        (0.1, "give a search space"),
    ],
)
def test_each_kind_of_wrong_search_space_is_named(spec: object, words: str) -> None:
    from cnnlab.search import search_problem

    assert words in search_problem({"params": {"optimizer.lr": spec}})


def test_a_valid_search_and_its_sampler_and_pruner_names() -> None:
    from cnnlab.search import search_problem

    space = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}
    assert search_problem({"params": space, "sampler": {"name": "tpe"}, "n_trials": 2}) is None
    assert "sampler.name='tpr': choose one of tpe" in search_problem(
        {"params": space, "sampler": {"name": "tpr"}}
    )
    assert "pruner.name='meadian'" in search_problem({"params": space, "pruner": {"name": "meadian"}})
    assert "n_trials=0" in search_problem({"params": space, "n_trials": 0})
    assert "params is empty" in search_problem({"params": {}})


@pytest.mark.slow  # a twin runs in make test (in-process or another command line)
def test_ray_requests_are_compared_with_the_resources_of_this_machine() -> None:
    from cnnlab.config import ray_problem

    assert ray_problem({"num_cpus": 4, "num_gpus": 0}, {"num_cpus": 2, "num_gpus": 0}) is None
    assert "num_cpus=8: each job asks for 8 CPU, but this machine has 4" in ray_problem(
        {"num_cpus": 4, "num_gpus": 0}, {"num_cpus": 8}
    )
    assert "resources.TPU=1" in ray_problem({"num_cpus": 4, "num_gpus": 0}, {"resources": {"TPU": 1}})
    assert "init.adress is not an option of ray.init" in ray_problem({"adress": "auto"}, {})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+hydra.launcher.ray.remote.num_gpu=1"],
            "cnnlab: hydra.launcher.ray.remote: Invalid option keyword num_gpu",
        ),
        (
            ["hydra.launcher.ray.remote.num_gpus=1", "+hydra.launcher.ray.init.num_gpus=0"],
            "cnnlab: hydra.launcher.ray.remote.num_gpus=1: each job asks for 1 GPU, but this machine has 0",
        ),
    ],
)
def test_the_sweep_callback_refuses_a_ray_sweep_no_job_could_run(
    overrides: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    from hydra import compose, initialize_config_dir

    from cnnlab import CONF_DIR
    from cnnlab.report import SweepReport

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["hydra/launcher=ray", *overrides], return_hydra_config=True
        )
    with pytest.raises(SystemExit) as stopped:
        SweepReport().on_multirun_start(cfg)
    assert stopped.value.code == 2 and capsys.readouterr().err.startswith(message)
