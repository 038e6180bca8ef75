"""cnnlab: a CNN course as reproducible experiments, on PyTorch Lightning and Hydra."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra configuration tree (``conf/`` at the repository root, linked into the package).
CONF_DIR = Path(__file__).resolve().parent / "conf"
