"""The detection task: losses that fall, mAP that ignores what it should, eval-mode validation losses, the run
folder (metrics, figures, checkpoint contract) and the detection recipes, composed by Hydra."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.config import ConfigError, check_pairing
from cnnlab.models.detectors import RetinaNet
from cnnlab.tasks.detection import (
    DetectionTask,
    losses_in_eval_mode,
    mean_average_precision,
    scored,
    trainable,
)
from cnnlab.train import train

#: det_shapes shrunk to 16 training images (4 steps an epoch) at a constant learning rate, for 8 epochs;
#: the first 6 test images hold every class
TINY = [
    "experiment=det_shapes",
    "data.train_size=18",
    "data.test_size=6",
    "data.batch_size=4",
    "optimizer.lr=3.0e-4",
    "scheduler=none",
    "trainer.max_epochs=8",
    "trainer.log_every_n_steps=1",
    "logger=[tensorboard,csv]",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny det_shapes run with TensorBoard and CSV logs, tested and exported."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cnnlab import CONF_DIR

    out = tmp_path_factory.mktemp("det_run")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=TINY)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.enable_progress_bar = False
        for key in ("progress_bar", "model_summary"):
            cfg.callbacks.pop(key)
    return out, train(cfg)


def epoch_means(run: Path, key: str) -> list[float]:
    with (run / "csv" / "metrics.csv").open() as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


@pytest.mark.slow
def test_losses_fall_on_a_tiny_run(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    components = ("classification", "bbox_regression", "bbox_ctrness")  # FCOS's
    for key in ("train/loss_epoch", *(f"train/loss_{name}" for name in components)):
        values = epoch_means(out, key)
        assert len(values) == 8, key
        first, last = sum(values[:2]) / 2, sum(values[-2:]) / 2
        assert last < (0.8 if key == "train/loss_epoch" else 1.0) * first, (key, values)


@pytest.mark.slow
def test_run_records_map_per_class_ap_and_the_contract(tiny_run: tuple[Path, dict]) -> None:
    out, record = tiny_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["optimized_metric"] == "val/map_50" and saved["optimized_mode"] == "max"
    for key in ("val/map", "val/map_50", "val/map_75", "test/map", "test/map_50", "test/map_75", "test/loss"):
        assert isinstance(saved[key], float), key
    per_class = sorted(k.split("/")[-1] for k in saved if k.startswith("test/map_per_class/"))
    assert per_class == ["circle", "square", "triangle"]  # the background has no boxes: left out
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    contract = ckpt["cnnlab"]["contract"]
    assert contract["class_names"] == ["background", "circle", "square", "triangle"]
    assert contract["score_threshold"] == 0.5 and contract["geometry"] == "none" and contract["mean"] == []
    assert (out / "export" / "model.pt").is_file()


@pytest.mark.slow
def test_tensorboard_shows_predictions_beside_the_truth(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {"val/detections", "test/detections", "train/augmented_samples"} <= images
    assert len(events.Images("val/detections")) == 8  # one per epoch, the sanity check left out
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_classification", "val/loss", "val/map_50", "val/map_per_class/circle"} <= scalars


# --- targets: what is trained on, what is scored -----------------------------------------------------


def target_with_flags() -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(
            [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 0.0, 50.0, 8.0], [5, 5, 5, 9]]
        ),
        "labels": torch.tensor([1, 2, 1, 1]),
        "difficult": torch.tensor([False, True, False, False]),
        "iscrowd": torch.tensor([False, False, True, False]),
    }


def test_training_skips_crowd_difficult_and_degenerate_boxes() -> None:
    kept = trainable(target_with_flags())
    assert kept["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]] and kept["labels"].tolist() == [1]
    assert set(kept) == {"boxes", "labels"}


def test_ignored_objects_are_neither_hits_nor_misses() -> None:
    target = target_with_flags()
    found = {"boxes": target["boxes"][:1], "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    metric = mean_average_precision()
    metric.update([found], [scored(target)])
    # the difficult, crowd and zero-width boxes do not count
    assert float(metric.compute()["map_50"]) == pytest.approx(1.0)
    plain = mean_average_precision()
    plain.update([found], [{"boxes": target["boxes"][:3], "labels": target["labels"][:3]}])
    assert float(plain.compute()["map_50"]) < 0.75  # counted, they would be misses


def test_validation_losses_leave_batch_norm_and_modes_untouched() -> None:
    torch.manual_seed(0)
    net = RetinaNet(num_classes=3, image_size=64).eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad(), losses_in_eval_mode(net):
        losses = net(images, targets)
    assert set(losses) == {"classification", "bbox_regression"} and all(
        torch.isfinite(v) for v in losses.values()
    )
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # no running statistic moved
    assert not any(m.training for m in net.modules())
    with torch.no_grad(), losses_in_eval_mode(net):
        again = net(images, targets)
    assert all(torch.equal(losses[k], again[k]) for k in losses)  # deterministic: nothing random ran


# --- configuration ---------------------------------------------------------------------------------


def test_detection_defaults_to_val_map_50_and_refuses_misspelt_metrics(make_cfg) -> None:
    cfg = make_cfg("experiment=det_shapes")
    assert cfg.optimized_metric == "val/map_50" and cfg.callbacks.checkpoint.mode == "max"
    with pytest.raises(ConfigError, match=r"optimized_metric=val/mAP.*val/map_50"):
        train(make_cfg("experiment=det_shapes", "optimized_metric=val/mAP"))


def test_classification_data_and_models_are_refused_with_the_options_that_fit(make_cfg) -> None:
    with pytest.raises(
        ConfigError, match=r"needs object boxes.*Datasets for task=detection: coco, penn_fudan"
    ):
        check_pairing(make_cfg("task=detection", "model=retinanet", "data=digits"))
    with pytest.raises(ConfigError, match=r"Models for task=detection: fcos, retinanet, ssdlite"):
        check_pairing(make_cfg("task=detection", "model=simple_cnn", "data=shapes"))


def test_score_threshold_must_be_a_score() -> None:
    with pytest.raises(ValueError, match="task.score_threshold"):
        DetectionTask(torch.nn.Linear(1, 1), {"_target_": "torch.optim.SGD", "lr": 0.1}, score_threshold=5)


# --- the exported model ----------------------------------------------------------------------------


def test_exported_model_keeps_the_networks_boxes_above_its_threshold(tmp_path: Path) -> None:
    import argparse

    from cnnlab.serving import detection as serving

    torch.manual_seed(0)
    net = RetinaNet(num_classes=3, image_size=64, score_thresh=0.0, detections_per_img=20).eval()
    contract = {"class_names": ["a", "b", "c"], "in_channels": 3, "image_size": 64, "resize_size": 64}
    contract.update(geometry="none", mean=[], std=[], score_threshold=0.5)
    scripted = torch.jit.script(serving.Exported(net, contract))
    image = torch.randint(0, 256, (3, 72, 90), dtype=torch.uint8)
    with torch.no_grad():
        expected = net([image.float() / 255])[0]
    everything = scripted(image, 0.0)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(everything[key], expected[key])
    assert len(everything["boxes"]) == 20 and (everything["boxes"][:, 2::2] <= 90).all()
    cut = float(expected["scores"][5])  # a threshold that keeps the six best
    assert len(scripted(image, cut)["boxes"]) == 6
    assert len(scripted(image)["boxes"]) == int((expected["scores"] >= 0.5).sum())  # the contract's
    # predict's output for it: a drawn PNG and a JSON of what was kept
    args = argparse.Namespace(model=tmp_path / "model.pt", threshold=cut, out=None)
    serving.show(scripted, [(tmp_path / "in" / "photo.png", image)], args)
    record = json.loads((tmp_path / "predictions" / "photo.json").read_text())
    assert len(record["detections"]) == 6 and record["threshold"] == cut
    assert record["detections"][0]["label"] in contract["class_names"]
    assert (tmp_path / "predictions" / "photo.png").is_file()


def test_predict_summary_counts_the_classes_kept() -> None:
    from cnnlab.serving.detection import summary

    names = ["background", "person", "dog"]
    assert summary(torch.tensor([1, 2, 1]), names) == "3 boxes: 2 person, 1 dog"
    assert summary(torch.tensor([2]), names) == "1 box: 1 dog"
    assert summary(torch.zeros(0, dtype=torch.int64), names) == "0 boxes"
