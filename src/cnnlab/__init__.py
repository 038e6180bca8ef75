"""cnnlab: a CNN course as reproducible experiments, on PyTorch Lightning and Hydra."""

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

#: The Hydra configuration tree (``conf/`` at the repository root, linked into the package).
CONF_DIR = Path(__file__).resolve().parent / "conf"

#: the Python API (``cnnlab.api``): imported on first use, so that ``import cnnlab`` loads no torch
API = ("compose", "fit", "load", "list_runs", "Run", "Predictor")


def __getattr__(name: str) -> Any:
    if name in API:
        from cnnlab import api

        return getattr(api, name)
    if name == "CnnlabError":
        from cnnlab.errors import CnnlabError

        return CnnlabError
    # anything else (a submodule: `from cnnlab import runs`) is for the import system to find
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API, "CnnlabError"])
