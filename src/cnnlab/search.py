"""Hyper-parameter search on Optuna: search spaces in YAML, TPE by default, pruning, a study that resumes.

The ``hydra/sweeper=optuna_search`` plugin (``hydra_plugins.cnnlab_search``) asks the study for trials, runs
each as a job of the multirun through the configured launcher (several side by side with ``n_jobs`` and
``hydra/launcher=ray``) and tells the study what each job returned: ``train.py``'s optimised metric, in its
task's direction. Each job reports its validation metric to the study after every epoch, and Optuna's pruner
stops trials that lag (Optuna's Lightning callback). The study lives in ``study.db`` (SQLite) in the sweep
folder: the same command run again continues it. ``best.yaml`` holds the best trial's overrides and the
command that re-runs it. Optuna is imported only by searches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from cnnlab.report import STUDY_FILE

log = logging.getLogger(__name__)

#: the kinds of search space a key can have, and the fields each takes
SPACES = {
    "float": ("low", "high", "log", "step"),
    "int": ("low", "high", "log", "step"),
    "categorical": ("choices",),
}


#: the samplers and pruners a search can name (``hydra.sweeper.sampler.name``, ``hydra.sweeper.pruner.name``)
SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "percentile", "hyperband", "none")


def space_problem(key: str, spec: Any) -> str | None:
    """What is wrong with the search space ``spec`` of ``key`` (its type, its fields, its range), or None."""
    example = "(e.g. {type: float, low: 1e-4, high: 1e-1, log: true})"
    if not isinstance(spec, Mapping):
        return f"hydra.sweeper.params.{key}={spec!r}: give a search space {example}"
    kind = spec.get("type")
    if kind not in SPACES:
        return f"hydra.sweeper.params.{key}: type={kind!r}; choose one of {', '.join(SPACES)} {example}"
    unknown = set(spec) - {"type", *SPACES[kind]}
    if unknown:
        return (
            f"hydra.sweeper.params.{key}: {sorted(unknown)} are not fields of a {kind} space; it takes "
            f"{', '.join(SPACES[kind])}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
            return f"hydra.sweeper.params.{key}: a categorical space needs choices: [a, b, ...]"
        return None
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or low >= high or (spec.get("log") and low <= 0):
        return (
            f"hydra.sweeper.params.{key}: low={low}, high={high}: give numbers with low < high "
            f"(and low > 0 with log: true) {example}"
        )
    return None


def search_problem(sweeper: Mapping[str, Any]) -> str | None:
    """What no trial of a search could survive (its spaces, sampler, pruner, counts), or None."""
    if not sweeper.get("params"):
        return "hydra.sweeper.params is empty: give the keys to search and their spaces"
    for key, spec in sweeper["params"].items():
        if problem := space_problem(key, spec):
            return problem
    for part, names, default in (("sampler", SAMPLERS, "tpe"), ("pruner", PRUNERS, "median")):
        name = (sweeper.get(part) or {}).get("name", default)
        if name not in names:
            return f"hydra.sweeper.{part}.name={name!r}: choose one of {', '.join(names)}"
    for count in ("n_trials", "n_jobs"):
        if not isinstance(sweeper.get(count, 1), int) or sweeper.get(count, 1) < 1:
            return f"hydra.sweeper.{count}={sweeper.get(count)}: give a whole number >= 1"
    return None


def suggest(trial: Any, key: str, spec: Mapping[str, Any]) -> Any:
    """The value ``trial`` draws for ``key`` from its search space ``spec`` (``type`` and its fields)."""
    problem = space_problem(key, spec)
    if problem:
        raise ValueError(problem)
    kind = spec["type"]
    if kind == "categorical":
        return trial.suggest_categorical(key, list(spec["choices"]))
    options = {k: spec[k] for k in ("log", "step") if spec.get(k) is not None}
    if kind == "int":
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), **options)
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), **options)


def as_override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override syntax."""
    if isinstance(value, str):
        return f"{key}={value}" if value.replace("_", "").replace("-", "").isalnum() else f"{key}='{value}'"
    if value is None:
        return f"{key}=null"
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def sampler_of(spec: Mapping[str, Any]) -> Any:
    """An Optuna sampler from its config: ``tpe`` (default), ``random`` or ``cmaes``, with a seed."""
    import optuna

    name, seed = spec.get("name", "tpe"), spec.get("seed")
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    samplers["cmaes"] = optuna.samplers.CmaEsSampler
    if name not in samplers:
        raise ValueError(f"hydra.sweeper.sampler.name={name!r}: choose one of {', '.join(SAMPLERS)}")
    return samplers[name](seed=seed)


def pruner_of(spec: Mapping[str, Any]) -> Any:
    """An Optuna pruner from its config: ``median`` (default), ``percentile``, ``hyperband`` or ``none``."""
    import optuna

    options = {k: v for k, v in spec.items() if k != "name"}
    pruners = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    name = spec.get("name", "median")
    if name not in pruners:
        raise ValueError(f"hydra.sweeper.pruner.name={name!r}: choose one of {', '.join(PRUNERS)}")
    return pruners[name](**options)


def direction_of(config: DictConfig) -> str:
    """ "maximize" or "minimize": the run's optimised metric in its task's direction."""
    from cnnlab.config import _metric_mode

    mode = _metric_mode(str(config.task._target_), str(config.optimized_metric))
    return "maximize" if mode == "max" else "minimize"


# --- the sweep, in the sweeper's process ----------------------------------------------------------------


def run_search(sweeper: Any, arguments: Sequence[str]) -> list[Sequence[Any]]:
    """Ask, launch and tell until the study holds ``n_trials`` finished trials; return every job's result."""
    import optuna
    from hydra.core.utils import JobStatus

    from cnnlab.report import write_report

    config = sweeper.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{sweep_dir / STUDY_FILE}"
    study = optuna.create_study(
        study_name=sweeper.study_name,
        storage=storage,
        direction=direction_of(config),
        sampler=sampler_of(sweeper.sampler),
        pruner=pruner_of(sweeper.pruner),
        load_if_exists=True,
    )
    requeue_unfinished(study)
    base = [a for a in arguments if not a.startswith("hydra/sweeper")]
    if any("," in a.split("=", 1)[-1] for a in base if "=" in a and not a.startswith("hydra.")):
        raise ValueError("optuna_search draws its values from hydra.sweeper.params; give no comma lists")
    job_index = 1 + max((int(p.name) for p in sweep_dir.iterdir() if p.name.isdigit()), default=-1)
    results: list[Sequence[Any]] = []
    while (remaining := sweeper.n_trials - finished(study)) > 0:
        trials = [study.ask() for _ in range(min(sweeper.n_jobs, remaining))]
        batch = [
            trial_overrides(trial, sweeper.params, base, storage, sweeper.study_name) for trial in trials
        ]
        returns = sweeper.launcher.launch(batch, initial_job_idx=job_index)
        job_index += len(batch)
        for trial, ret in zip(trials, returns, strict=True):
            value = ret._return_value if ret.status == JobStatus.COMPLETED else None
            if isinstance(value, (int, float)) and math.isfinite(value):
                study.tell(trial, float(value))
            elif type(ret._return_value).__name__ == "TrialPruned":
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        results.append(returns)
    best = write_best(sweep_dir, study, base)
    write_report(sweep_dir)
    if best is not None:
        log.info("search: best trial %d, %s = %.4g; overrides in %s", *best)
    return results


def finished(study: Any) -> int:
    """Trials that count towards ``n_trials``: completed, pruned or failed."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=states))


def requeue_unfinished(study: Any) -> None:
    """Trials left running by an interrupted search are marked failed and asked again, with their values."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=True)
        log.info("search: trial %d was interrupted; its values are tried again", trial.number)


def trial_overrides(
    trial: Any, params: Mapping[str, Any], base: Sequence[str], storage: str, study_name: str
) -> list[str]:
    """A job's overrides: the command line's, the trial's values, and where to report to the study."""
    values = [as_override(key, suggest(trial, key, spec)) for key, spec in params.items()]
    where = [
        f"+search.storage='{storage}'",
        f"+search.study={study_name}",
        f"+search.trial_id={trial._trial_id}",
    ]
    return [*base, *values, *where]


def write_best(sweep_dir: Path, study: Any, base: Sequence[str]) -> tuple[int, str, float, Path] | None:
    """``best.yaml``: the best trial's value, its overrides and the command that re-runs it."""
    try:
        best = study.best_trial
    except ValueError:  # no trial completed
        return None
    overrides = [*base, *(as_override(k, v) for k, v in best.params.items())]
    command = "python train.py " + " ".join(overrides)
    record = {"trial": best.number, "value": best.value, "overrides": overrides, "command": command}
    path = sweep_dir / "best.yaml"
    heading = f"# the best of {len(study.trials)} trials of study {study.study_name!r}"
    path.write_text(f"{heading} ({study.direction.name.lower()})\n" + yaml.safe_dump(record, sort_keys=False))
    return best.number, "value", float(best.value), path


# --- in each job -----------------------------------------------------------------------------------------


def pruning_callback(cfg: DictConfig) -> Any:
    """Optuna's Lightning callback for this job's trial: it reports the optimised metric every epoch."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    search = OmegaConf.to_container(cfg.search, resolve=True)
    study = optuna.load_study(study_name=str(search["study"]), storage=str(search["storage"]))
    trial = optuna.trial.Trial(study, int(search["trial_id"]))
    return PyTorchLightningPruningCallback(trial, monitor=str(cfg.optimized_metric))
