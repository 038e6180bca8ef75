"""Every model trains a batch on a small dataset of its task, and every dataset feeds a small model of it.

Composed by Hydra as a user's command line would; one batch of train, val and test each (fast_dev_run).
"""

from __future__ import annotations

import pytest
from omegaconf import open_dict

from cnnlab import CONF_DIR
from cnnlab.config import options, target_of
from cnnlab.train import train

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
# per task: the small dataset every model of the task trains on, and the small model every dataset feeds
SMALL = {
    "classification": ("digits", "mlp"),
    "autoencoder": ("digits", "autoencoder_conv"),
    "anomaly": ("digits", "autoencoder_conv"),
    "segmentation": ("shapes", "unet"),
    "detection": ("shapes", "fcos"),
}
# photo datasets run at a small size here; Inception v3 needs 75 px at least
PHOTO_SIZE = {"image_size": 64, "resize_size": 72}
PHOTOS = ("image_folder", "landmarks", "mvtec")
# photos with boxes or masks keep their aspect: only their shorter side is set
DENSE_PHOTOS = ("coco", "mask_folder", "penn_fudan", "voc_detection", "voc_segmentation", "yolo_folder")
BIG_INPUT = {"inception_v3": {"image_size": 80, "resize_size": 88}}


def task_of(option: str) -> type:
    return target_of("task", option)


def models_for(task: str) -> list[str]:
    wanted = task_of(task).network_output
    return options("model", lambda c: getattr(c, "output", None) == wanted)


def datasets_for(task: str) -> list[str]:
    needs = set(task_of(task).samples.needs)
    return options("data", lambda c: hasattr(c, "provides") and needs <= set(c.provides([0])))


MODEL_CASES = [(task, model) for task in TASKS for model in models_for(task)]
DATA_CASES = [(task, data) for task in TASKS for data in datasets_for(task)]


def test_every_task_has_small_defaults_and_every_option_is_covered() -> None:
    assert set(SMALL) == set(TASKS)
    covered_models = {m for _, m in MODEL_CASES}
    assert covered_models == {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    assert {d for _, d in DATA_CASES} == {p.stem for p in (CONF_DIR / "data").glob("*.yaml")}


def run_one_batch(make_cfg, fit_small_files, task: str, model: str, data: str) -> dict:
    overrides = [f"task={task}", f"model={model}", f"data={data}", "debug=fdr", "logger=none"]
    overrides += ["data.batch_size=4", "task.figures=false"]
    cfg = make_cfg(*overrides)
    with open_dict(cfg):
        fit_small_files(cfg)
        if data in PHOTOS:
            cfg.data.update(BIG_INPUT.get(model, PHOTO_SIZE))
        if data in DENSE_PHOTOS:
            cfg.data.image_size = 48
        if (task, data) == ("segmentation", "shapes"):
            cfg.data.image_size = 32  # FCN's dilated ResNet-50 at the shapes' 64 px takes seconds a step
    return train(cfg)


@pytest.mark.parametrize(("task", "model"), MODEL_CASES, ids=lambda v: str(v))
def test_model_trains_a_batch(make_cfg, fit_small_files, task: str, model: str) -> None:
    data = SMALL[task][0]
    if model in BIG_INPUT:  # a network for large inputs: on photos of its size
        data = "image_folder"
    record = run_one_batch(make_cfg, fit_small_files, task, model, data)
    assert record["test/loss"] is not None and record["optimized_metric"]


@pytest.mark.parametrize(("task", "data"), DATA_CASES, ids=lambda v: str(v))
def test_dataset_feeds_a_model(make_cfg, fit_small_files, fake_cifar_accepted, task: str, data: str) -> None:
    record = run_one_batch(make_cfg, fit_small_files, task, SMALL[task][1], data)
    assert record["test/loss"] is not None


def test_a_network_too_small_for_its_input_says_what_to_do(make_cfg, fit_small_files) -> None:
    # Hydra reports the network's own message: the minimum size and what to do
    with pytest.raises(Exception, match="at least 75 px.*resize the data"):
        run_one_batch(make_cfg, fit_small_files, "classification", "inception_v3", "digits")
