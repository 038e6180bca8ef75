"""The ``optuna_search`` sweeper: Hydra's side of ``cnnlab.search`` (its config, and the launcher it drives).

Hydra imports every plugin module at start-up: this one imports neither Optuna nor cnnlab's training code
until a search runs. Its annotations are real types, not postponed strings: OmegaConf reads them.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class OptunaSearchConf:
    """The sweeper's options (``hydra.sweeper.*``)."""

    _target_: str = "hydra_plugins.cnnlab_search.optuna_search.OptunaSearch"
    #: finished trials the study should hold (a study run again continues up to this number)
    n_trials: int = 20
    #: trials launched together: side by side with a parallel launcher (hydra/launcher=ray)
    n_jobs: int = 1
    study_name: str = "search"
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(
        default_factory=lambda: {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 1}
    )
    #: config key -> search space: {type: float|int|categorical, low, high, log, step, choices}
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna_search", node=OptunaSearchConf, provider="cnnlab"
)


class OptunaSearch(Sweeper):
    """Asks an Optuna study for trials and runs them as the jobs of a multirun."""

    def __init__(
        self,
        n_trials: int,
        n_jobs: int,
        study_name: str,
        sampler: Any,
        pruner: Any,
        params: Any,
    ) -> None:
        super().__init__()
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials={n_trials} and n_jobs={n_jobs} must be >= 1")
        plain = OmegaConf.to_container if isinstance(params, DictConfig) else dict
        self.n_trials, self.n_jobs, self.study_name = n_trials, n_jobs, study_name
        self.sampler = dict(plain(sampler) if sampler is not None else {})
        self.pruner = dict(plain(pruner) if pruner is not None else {})
        self.params = dict(plain(params) if params is not None else {})
        if not self.params:
            raise ValueError("hydra.sweeper.params is empty: give the keys to search and their spaces")
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from cnnlab.search import run_search

        return run_search(self, arguments)
