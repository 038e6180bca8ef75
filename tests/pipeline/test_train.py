"""The whole pipeline on the embedded digits: fit, test the best checkpoint, metrics.json, export, eval."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab import CONF_DIR
from cnnlab.checkpoints import load_task
from cnnlab.config import ConfigError, check_pairing
from cnnlab.data.digits import DigitsDataModule
from cnnlab.errors import CheckpointError
from cnnlab.evaluate import evaluate
from cnnlab.export import export_checkpoint
from cnnlab.serving import formats, runtime
from cnnlab.train import _NoAdverts, train


@pytest.fixture(scope="module")
def trained(cli_run: Path) -> tuple[Path, dict]:
    """The default job (simple_cnn on the embedded digits) after four epochs of `python train.py`, exported in
    every format (tests/conftest.py trains it once per test run), and its metrics.json."""
    return cli_run, json.loads((cli_run / "metrics.json").read_text())


def test_run_folder_holds_checkpoints_metrics_export_and_logs(trained: tuple[Path, dict]) -> None:
    out, record = trained
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    contract = json.loads((out / "export" / "model.json").read_text())
    assert contract["class_names"] == [str(i) for i in range(10)] and contract["in_channels"] == 1
    saved = json.loads((out / "metrics.json").read_text())
    files = {"pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.pt"}
    assert saved["export"] == str(out / "export") and saved["export_files"] == files
    assert all((out / "export" / name).is_file() for name in files.values())
    for key in ("val/acc", "test/acc", "test/f1", "test/acc_top5", "best/val/acc"):
        assert 0.0 <= saved[key] <= 1.0, key
    assert saved["test/acc"] > 0.85  # four epochs of the default CNN on real digits
    assert saved["epochs"] == 4


def test_tensorboard_has_scalars_hparams_and_figures(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_epoch", "val/acc", "val/f1", "test/acc", "lr-AdamW/stage0"} <= scalars
    assert {"test/confusion_matrix", "test/predictions"} <= set(events.Tags()["images"])
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins and "_hparams_/experiment" in plugins
    session = plugins["_hparams_/session_start_info"].decode("latin1")
    assert "max_epochs" in session and "optimizer" in session


def test_checkpoint_loads_with_weights_only(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["run_config"]["model"]["_target_"].endswith("SimpleCNN")
    assert ckpt["cnnlab"]["contract"]["image_size"] == 16


@pytest.mark.parametrize("name", ["model.pt2", "model.onnx", "model.pt"])
def test_every_format_gives_the_checkpoints_probabilities(trained: tuple[Path, dict], name: str) -> None:
    out, _ = trained
    task = load_task(out / "checkpoints" / "best.ckpt").eval()
    model = runtime.load(out / "export" / name)
    datamodule = DigitsDataModule(image_size=16, seed=42)
    datamodule.setup()
    raw = datamodule.load_split("test")
    images = [raw[i][0] for i in range(20)]
    with torch.no_grad():
        expected = torch.softmax(task(torch.stack([datamodule.test_set[i][0] for i in range(20)])), 1)
    got = torch.cat([model(runtime.as_batch(image, 1))["probabilities"] for image in images])
    assert (expected - got).abs().max() < 1e-4
    top1 = [record["top"][0]["index"] for record in runtime.predict(model, images, top_k=1)]
    assert top1 == expected.argmax(1).tolist()
    # measured when it was written, on validation images at two sizes, and recorded beside it
    described = json.loads((out / "export" / "model.json").read_text())["formats"][model.format]
    assert described["max_abs_diff"]["probabilities"] < 1e-4 and "16x16 and 25x23" in described["verified_on"]
    # any image size: a 40x56 photo-like input is resized and cropped inside the exported graph
    (record,) = runtime.predict(model, [torch.randint(0, 256, (1, 40, 56), dtype=torch.uint8)])
    assert sum(c["probability"] for c in record["top"]) <= 1 + 1e-5 and len(record["top"]) == 5


def test_a_format_that_cannot_hold_the_model_is_recorded_and_the_others_written(
    trained: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = trained
    real_write = formats.write

    def refuse_onnx(fmt: str, *args: object) -> None:
        if fmt == "onnx":
            raise RuntimeError("an operator this exporter lacks")
        real_write(fmt, *args)

    monkeypatch.setattr(formats, "write", refuse_onnx)
    images = [torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8) for _ in range(2)]
    described = export_checkpoint(out / "checkpoints" / "best.ckpt", tmp_path, ["pt2", "onnx"], images)
    assert described["formats"]["onnx"] == {
        "error": "RuntimeError: an operator this exporter lacks",
        "verified_on": "2 validation images at 16x16 and 25x23",
    }
    assert (tmp_path / "model.pt2").is_file() and not (tmp_path / "model.onnx").exists()
    assert not list(tmp_path.glob("*.partial"))
    assert json.loads((tmp_path / "model.json").read_text()) == described


def test_export_options_are_checked_before_any_data_is_read(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DigitsDataModule, "setup", lambda *a: pytest.fail("data was read"))
    for override, words in (
        ("export.formats=[pt2,h5]", "choose one or more of pt2, onnx, torchscript"),
        ("export.formats=[]", "choose one or more"),
        ("+export.opset=17", "export.opset is not an export option"),
    ):
        with pytest.raises(ConfigError, match=words):
            train(make_cfg(override))


def test_eval_reproduces_the_test_metrics(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, record = trained
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.enable_progress_bar = False
    metrics = evaluate(cfg)
    assert metrics["test/acc"] == pytest.approx(record["test/acc"], abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]


def test_lightning_adverts_are_dropped_and_its_other_lines_kept() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(
            "lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, message, (), None
        )

    advert_filter = _NoAdverts()
    assert not advert_filter.filter(record("💡 Tip: For seamless cloud logging, try installing [litlogger]"))
    assert advert_filter.filter(record("GPU available: False, used: False"))


def test_eval_refuses_a_missing_checkpoint(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(f"ckpt_path={tmp_path / 'nope.ckpt'}", config_name="eval")
    with pytest.raises(CheckpointError, match="nope.ckpt does not exist"):
        evaluate(cfg)


def test_a_model_the_task_cannot_train_is_refused(make_cfg) -> None:
    cfg = make_cfg("model=simple_cnn")
    with open_dict(cfg):
        cfg.model._target_ = "pipeline.test_train.PixelNet"
    with pytest.raises(
        ConfigError,
        match=r"returns one score per class for each pixel.*Models for task=classification: .*mlp",
    ):
        check_pairing(cfg)


class PixelNet(torch.nn.Module):
    """Stands for a network of another kind of output."""

    output = "pixel_scores"


def test_a_dataset_without_what_the_task_needs_is_refused(make_cfg) -> None:
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.data._target_ = "pipeline.test_train.UnlabelledData"
    with pytest.raises(
        ConfigError, match=r"needs a class label per image.*Datasets for task=classification: .*digits"
    ):
        check_pairing(cfg)


class UnlabelledData(DigitsDataModule):
    """Stands for a dataset of masks without class labels."""

    targets = ("mask",)


def test_val_loss_checkpoints_the_epoch_with_the_lowest_validation_loss(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("optimized_metric=val/loss", "trainer.max_epochs=4", "logger=csv", "export=null")
    record = train(cfg)
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as handle:
        losses = {int(r["epoch"]): float(r["val/loss"]) for r in csv.DictReader(handle) if r["val/loss"]}
    assert len(losses) == 4
    best_epoch = torch.load(record["best_checkpoint"], weights_only=True)["epoch"]
    assert best_epoch == min(losses, key=losses.__getitem__)
    assert record["optimized_mode"] == "min" and record["best/val/loss"] == pytest.approx(
        min(losses.values())
    )


def test_a_misspelt_optimized_metric_is_refused_before_any_data_is_read(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(*args: object) -> None:
        raise AssertionError("data was read")

    monkeypatch.setattr(DigitsDataModule, "load_split", no_data)
    with pytest.raises(ConfigError, match=r"optimized_metric=val/accuracy.*choose one of val/loss, val/acc"):
        train(make_cfg("optimized_metric=val/accuracy"))


def test_unknown_model_name_lists_the_valid_ones(make_cfg) -> None:
    with pytest.raises(Exception, match=r"(?s)model/nonet.*Available options.*resnet.*simple_cnn"):
        make_cfg("model=nonet")


def test_unknown_dataset_name_lists_the_valid_ones(make_cfg) -> None:
    with pytest.raises(Exception, match=r"(?s)data/nodata.*Available options.*digits"):
        make_cfg("data=nodata")


@pytest.mark.parametrize("override", ["finetune.freeze=9", "finetune.freeze=some", "normalization=imagenet"])
def test_bad_values_are_clear_errors(make_cfg, override: str) -> None:
    cfg = make_cfg("debug=fdr", override)
    with pytest.raises(ValueError, match=override.split("=")[0]):
        train(cfg)


def test_lr_finder_in_the_pipeline_sets_the_rate_it_plots(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("tuner.lr_find=true", "tuner.num_training=30", "trainer.max_epochs=2", "export=null")
    configured = cfg.optimizer.lr
    (tmp_path / "run" / ".hydra").mkdir(parents=True)  # as Hydra makes it before the run starts
    record = train(cfg)
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 0
    ckpt = torch.load(record["best_checkpoint"], weights_only=True)
    lr = ckpt["hyper_parameters"]["optimizer"]["lr"]
    assert lr != configured and 1e-7 <= lr <= 1.0
    # the rate used is the rate recorded: in the run config of the checkpoint and in the config itself
    assert ckpt["hyper_parameters"]["run_config"]["optimizer"]["lr"] == lr == cfg.optimizer.lr
    assert OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml").optimizer.lr == lr


def test_a_failed_export_never_loses_the_run(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg("trainer.max_epochs=1", "logger=csv")
    out = Path(cfg.paths.output_dir)

    def failing_export(*args: object, **kwargs: object) -> dict:
        # metrics.json is already written when the export starts
        assert json.loads((out / "metrics.json").read_text())["test/acc"] > 0
        raise CheckpointError("the disk is full")

    monkeypatch.setattr("cnnlab.export.export_checkpoint", failing_export)
    record = train(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["export"] is None and saved["export_error"] == "the disk is full" == record["export_error"]
    assert saved["test/acc"] == record["test/acc"] and (out / "checkpoints" / "best.ckpt").is_file()
