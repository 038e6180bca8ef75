"""Every model with every dataset, composed by Hydra as a user's command line would, one batch each."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from cnnlab import CONF_DIR
from cnnlab.train import train

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
# photo datasets run at a small size here; Inception v3 needs 75 px at least
PHOTO_SIZE = {"image_size": 64, "resize_size": 72}
NEEDS_75PX = {"inception_v3"}


def test_every_option_is_covered() -> None:
    assert len(MODELS) >= 11 and {
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "image_folder",
        "landmarks",
    } <= set(DATASETS)


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_model_trains_on_dataset(
    make_cfg, data_dir: Path, fake_cifar_accepted, model: str, data: str
) -> None:
    overrides = [f"model={model}", f"data={data}", "debug=fdr", "logger=none", "data.batch_size=4"]
    if data in ("image_folder", "landmarks"):
        size = {"image_size": 80, "resize_size": 88} if model in NEEDS_75PX else PHOTO_SIZE
        overrides += [f"data.{k}={v}" for k, v in size.items()] + ["data.num_classes=3", "data.num_workers=0"]
    if data == "image_folder":
        overrides.append(f"data.root={data_dir / 'folder'}")
    if data in ("mnist", "fashion_mnist", "cifar10"):
        overrides += ["data.num_workers=0", "data.download=false"]
    cfg = make_cfg(*overrides)
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
        cfg.callbacks = {}
    if model in NEEDS_75PX and cfg.data.image_size < 75:
        # Hydra reports the network's own message: the minimum size and what to do
        with pytest.raises(Exception, match="at least 75 px.*resize the data"):
            train(cfg)
        return
    record = train(cfg)
    assert 0.0 <= record["test/acc"] <= 1.0 and record["test/loss"] is not None
