"""Shared fixtures: compose the real Hydra configs, as a user's command line would.

torch, torchvision and Hydra are imported where they are used: make test's controlling process loads this
file too, and only the test processes need them."""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from once import built_once

from cnnlab import CONF_DIR

if TYPE_CHECKING:
    from omegaconf import DictConfig

# every test runs on the CPU, also where a GPU is present
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # one thread per test process: `-n 2` on two cores with torch's two threads each oversubscribes the cores,
    # and OpenMP's waiting threads then make small models several times slower; the variable reaches the
    # train.py subprocesses some tests start
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The test files in the order that balances make test's two processes: first the files that build a
    run of their own (a module- or session-scoped fixture of ours), then the others, most tests first.

    make test hands out whole files (``--dist loadfile --no-loadscope-reorder``) as the processes free up; a
    long file handed out last would leave one process finishing it alone."""

    def builds_a_run(item: pytest.Item) -> bool:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        # ours have a baseid (the folder or file defining them); pytest's own, tmp_path_factory say, none
        return any(d[-1].scope in ("module", "session") and d[-1].baseid for d in defs)

    heavy = {item.path for item in items if builds_a_run(item)}
    count = Counter(item.path for item in items)
    items.sort(key=lambda item: (item.path not in heavy, -count[item.path]))  # stable within a file


def pytest_collection_finish(session: pytest.Session) -> None:
    """Keep what collection imported (torch, Lightning, Hydra: millions of objects) out of the garbage
    collector's full passes, which otherwise walk all of it some dozen times per process (0.1-0.2 s each)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python train.py` for four epochs through the real entry point, exported in every format: the run the
    pipeline's and the command-line tests read and the app's tests serve, trained once per test run."""
    from cli.test_cli import QUIET, ROOT, run

    def build(folder: Path) -> None:
        run(str(ROOT / "train.py"), "trainer.max_epochs=4", f"hydra.run.dir={folder / 'run'}", *QUIET)

    return built_once(tmp_path_factory, "cli", build) / "run"


@pytest.fixture(scope="session")
def anomaly_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ae_anomaly_digits recipe with zeros as the only normal class and validation of zeros only, eight
    epochs, exported in every format: the run the anomaly task's, the autoencoder command lines' and the app's
    tests read, trained once per test run. ``record.json`` beside it holds what ``train`` returned."""
    import json

    from tasks.test_anomaly import ZEROS_ONLY
    from tasks.test_autoencoder import ALL_FORMATS, run

    def build(folder: Path) -> None:
        record = run(
            folder / "run", "experiment=ae_anomaly_digits", *ZEROS_ONLY, "trainer.max_epochs=8", ALL_FORMATS
        )
        (folder / "record.json").write_text(json.dumps(record))

    return built_once(tmp_path_factory, "anomaly_run", build) / "run"


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with overrides; the run writes to tmp_path, quietly, on the CPU."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    def _make(*overrides: str, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.data_dir = str(tmp_path / "data")
            cfg.trainer.accelerator = "cpu"
            cfg.trainer.enable_progress_bar = False
            cfg.trainer.enable_model_summary = False
            for key in ("progress_bar", "model_summary"):
                (cfg.get("callbacks") or {}).pop(key, None)
            if cfg.get("export") and not any(o.startswith(("export", "+export")) for o in overrides):
                # one format, the quickest to write: the tests of export (tests/serving, the tasks' export
                # tests, the command lines) ask for every format they check
                cfg.export.formats = ["torchscript"]
        return cfg

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture
def fake_cifar_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision's CIFAR10 read fake batches: it compares every file with the official release's MD5.

    torchvision's own dataset tests (test/datasets_utils.py, ``_patch_checks``) patch ``check_integrity`` in
    the dataset's module for fake data; we do the same, but keep the check that each file exists.
    """
    import torchvision.datasets.cifar
    from torchvision.datasets.utils import check_integrity

    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: check_integrity(fpath)
    )
