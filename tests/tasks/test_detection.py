"""The detection task: losses that fall, mAP that ignores what it should, eval-mode validation losses, the run
folder (metrics, figures, checkpoint contract), every export format giving the checkpoint's detections and
predict the same records from each, and the detection recipes, composed by Hydra."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.checkpoints import load_task
from cnnlab.config import ConfigError, check_pairing
from cnnlab.data.shapes import ShapesDataset
from cnnlab.models.detectors import RetinaNet
from cnnlab.predict import main as predict
from cnnlab.serving import detection as serving
from cnnlab.serving import formats, runtime
from cnnlab.tasks.detection import (
    DetectionTask,
    losses_in_eval_mode,
    mean_average_precision,
    scored,
    trainable,
)
from cnnlab.train import train

from .test_autoencoder import ALL_FORMATS, FORMAT_FILES, predicted

#: det_shapes shrunk to 16 training images (4 steps an epoch) at a constant learning rate, for 8 epochs;
#: the first 6 test images hold every class. Its scores stay low (FCOS's lie between its own score_thresh,
#: 0.2, and about 0.45 after so short a run): a score_threshold of 0.25 keeps a few dozen detections per
#: image, so that the export's verification compares detections the model reports
SCORE_THRESHOLD = 0.25
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
    f"task.score_threshold={SCORE_THRESHOLD}",
    ALL_FORMATS,
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny det_shapes run with TensorBoard and CSV logs, tested and exported in every format."""
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
    assert contract["score_threshold"] == SCORE_THRESHOLD
    assert contract["geometry"] == "none" and contract["mean"] == []
    assert saved["export"] == str(out / "export")
    assert saved["export_files"] == {"pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.pt"}


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


def shapes_images(count: int, size: int, seed: int) -> list[torch.Tensor]:
    """Shapes pictures (uint8, as files hold them) the run did not train on."""
    return [ShapesDataset(count, image_size=size, seed=seed)[i][0] for i in range(count)]


@pytest.mark.slow
def test_every_format_is_written_and_verified_on_detections_the_model_keeps(
    tiny_run: tuple[Path, dict],
) -> None:
    out, _ = tiny_run
    described = json.loads((out / "export" / "model.json").read_text())
    assert described["score_threshold"] == SCORE_THRESHOLD and described["outputs"] == [
        "boxes",
        "scores",
        "labels",
        "keep",
    ]
    for fmt, name in zip(formats.FORMATS, FORMAT_FILES, strict=True):
        info = described["formats"][fmt]
        assert info["file"] == name and (out / "export" / name).stat().st_size == info["bytes"], fmt
        # torchvision's detectors fix their size in torch.export's graph: the training size
        shape = ["dynamic", 3, "dynamic", "dynamic"] if fmt == "torchscript" else [1, 3, 64, 64]
        assert info["input_shape"] == shape, fmt
        # the module's kept detections were each looked for in the export's
        assert info["max_abs_diff"]["compared"] > 0, fmt
        assert "at 64x64 and 98x83" in info["verified_on"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMAT_FILES)
def test_every_format_gives_the_checkpoints_detections_at_the_training_size(
    tiny_run: tuple[Path, dict], name: str
) -> None:
    out, _ = tiny_run
    task = load_task(out / "checkpoints" / "best.ckpt").eval()
    module = serving.wrap(task.net, task.contract).eval()
    model = runtime.load(out / "export" / name)
    expected, got = [], []
    for image in shapes_images(4, 64, seed=11):
        batch = runtime.as_batch(image, 3)
        with torch.inference_mode():
            expected.append(dict(zip(module.outputs, module(batch), strict=True)))
        got.append(model(batch))
    diffs = serving.parity(expected, got)
    assert diffs["compared"] > 0 and diffs["unmatched"] == 0 and diffs["count"] == 0
    assert diffs["boxes"] < 1e-3 and diffs["scores"] < 1e-4
    # the flag is the model's own threshold
    assert all(torch.equal(g["keep"], g["scores"] >= SCORE_THRESHOLD) for g in got)


@pytest.mark.slow
def test_predict_gives_the_same_detections_from_every_format(
    tiny_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = tiny_run
    paths = []
    for n, image in enumerate(shapes_images(2, 64, seed=12)):
        paths.append(tmp_path / f"shapes_{n}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    found = {name: predicted(capsys, out / "export" / name, paths) for name in FORMAT_FILES}
    reference = found["model.pt"]
    assert [r["image"] for r in reference] == [str(p) for p in paths]
    assert sum(len(r["detections"]) for r in reference) > 0
    for record in reference:
        assert record["task"] == "detection" and record["threshold"] == SCORE_THRESHOLD
        assert all(d["score"] >= SCORE_THRESHOLD and d["class"] != "background" for d in record["detections"])
    for name, records in found.items():
        for got, want in zip(records, reference, strict=True):
            assert {k: v for k, v in got.items() if k != "detections"} == {
                k: v for k, v in want.items() if k != "detections"
            }
            # the same detections, in any order among equal scores
            assert len(got["detections"]) == len(want["detections"]), name
            for detection in want["detections"]:
                assert any(
                    d["class"] == detection["class"]
                    and d["score"] == pytest.approx(detection["score"], abs=1e-4)
                    and d["box"] == pytest.approx(detection["box"], abs=0.02)
                    for d in got["detections"]
                ), (name, detection)


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


def test_exported_model_keeps_the_networks_boxes_above_its_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    net = RetinaNet(num_classes=3, image_size=64, score_thresh=0.0, detections_per_img=20).eval()
    contract = {"class_names": ["a", "b", "c"], "in_channels": 3, "image_size": 64, "resize_size": 64}
    contract.update(geometry="none", mean=[], std=[], score_threshold=0.5)
    contract.update(
        task="detection", serving="cnnlab.serving.detection", outputs=list(serving.Exported.outputs)
    )
    module = serving.wrap(net, contract).eval()
    formats.write("torchscript", module, torch.rand(1, 3, 64, 64), tmp_path / "model.pt", contract, False)
    model = runtime.load(tmp_path / "model.pt")
    image = torch.randint(0, 256, (3, 72, 90), dtype=torch.uint8)
    with torch.no_grad():
        expected = net.detect([image.float() / 255])[0]
    outputs = model(runtime.as_batch(image, 3))
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(outputs[key], expected[key])
    assert len(outputs["boxes"]) == 20 and (outputs["boxes"][:, 2::2] <= 90).all()
    # the contract's threshold, inside the graph: the detections it keeps
    assert torch.equal(outputs["keep"], expected["scores"] >= 0.5)
    (record,) = runtime.predict(model, [image])
    assert record["threshold"] == 0.5 and len(record["detections"]) == int((expected["scores"] >= 0.5).sum())
    cut = float(expected["scores"][5])  # a threshold that keeps the six best
    (record,) = runtime.predict(model, [image], threshold=cut)
    assert len(record["detections"]) == 6 and record["threshold"] == cut
    # predict's output for it, beside the model by default: a drawn PNG and a JSON of what was kept
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(photo)
    with pytest.raises(SystemExit) as exit_code:
        predict([str(tmp_path / "model.pt"), str(photo), "--threshold", str(cut)])
    assert exit_code.value.code == 0
    assert capsys.readouterr().out.startswith(f"{photo}: 6 boxes: ")
    saved = json.loads((tmp_path / "predictions" / "photo.json").read_text())
    assert saved == record and all(
        d["class"] == contract["class_names"][d["index"]] for d in saved["detections"]
    )
    assert (tmp_path / "predictions" / "photo.png").is_file()


def test_export_verification_matches_boxes_of_no_area_by_their_corners() -> None:
    # boxes clipped to a line at the image's edge have no IoU (0 / 0): the same line is a match, another not
    boxes = torch.tensor([[60.0, 28.0, 60.0, 31.0], [60.0, 38.0, 60.0, 41.0], [2.0, 2.0, 20.0, 20.0]])
    found = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])}
    found["keep"] = torch.tensor([True, True, True])
    assert serving.parity([found], [found]) == {
        "boxes": 0.0,
        "scores": 0.0,
        "unmatched": 0.0,
        "count": 0,
        "compared": 3.0,
    }
    shifted = dict(found, boxes=boxes + torch.tensor([0.0, 0.2, 0.0, 0.2]))
    assert serving.parity([found], [shifted])["boxes"] == pytest.approx(0.2)
    lost = {k: v[1:] for k, v in found.items()}  # the first line is missing: the other line is no match
    assert serving.parity([found], [lost])["unmatched"] == pytest.approx(1 / 3, abs=1e-3)


def test_predict_line_counts_the_classes_kept() -> None:
    def kept(*names: str) -> dict:
        return {"detections": [{"class": name} for name in names]}

    assert serving.line(kept("person", "dog", "person")) == "3 boxes: 2 person, 1 dog"
    assert serving.line(kept("dog")) == "1 box: 1 dog"
    assert serving.line(kept()) == "0 boxes"
