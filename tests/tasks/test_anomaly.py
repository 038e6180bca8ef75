"""The anomaly task: the other digits are found, thresholds chosen on validation, pixel AUROC on MVTec AD
folders, every export format scores as the checkpoint does and predict gives the same records from each, and
clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from fakedense import write_mvtec
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import binary_auroc

from cnnlab.checkpoints import load_task, read_checkpoint
from cnnlab.data.digits import DigitsDataModule
from cnnlab.errors import ConfigError
from cnnlab.models.autoencoders import LinearAutoencoder
from cnnlab.samples import IGNORE_INDEX, stack_collate
from cnnlab.serving import runtime
from cnnlab.serving.anomaly import image_scores
from cnnlab.tasks.anomaly import PIXEL_THRESHOLDS, AnomalyTask, BinnedAUROC, best_f1_threshold

from .test_autoencoder import (
    ADAM,
    FORMAT_FILES,
    assert_same_records,
    predicted,
    run,
    write_digits,
)

# the recipe with zeros as normal and no anomalies in validation: the checkpoint by val/loss, the threshold a
# quantile of normal scores
ZEROS_ONLY = ("data.normal_classes=[0]", "data.val_anomalies=0", "optimized_metric=val/loss")


@pytest.fixture(scope="module")
def detected(anomaly_run: Path) -> tuple[Path, dict]:
    """The run folder of tests/conftest.py's anomaly_run (zeros normal, eight epochs, every format) and the
    record ``train`` returned."""
    return anomaly_run, json.loads((anomaly_run.parent / "record.json").read_text())


def digit_batch(count: int = 64) -> tuple[torch.Tensor, dict]:
    """Test digits as float batches of what PNG files hold (8 bits), with their anomaly flags."""
    datamodule = DigitsDataModule(image_size=16, seed=42, normal_classes=[0], spec=AnomalyTask.samples)
    datamodule.setup()
    images, targets = next(iter(datamodule.test_dataloader()))
    return (images[:count] * 255).round() / 255, {k: v[:count] for k, v in targets.items()}


def test_the_other_digits_are_found(detected: tuple[Path, dict]) -> None:
    out, record = detected
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(record))
    assert (
        record["test/auroc"] > 0.9 and record["test/ap"] > 0.9
    )  # chance: 0.5 and 0.9 (nine anomalies in ten)
    for key in ("test/precision", "test/recall", "test/f1"):
        assert 0.5 < record[key] <= 1.0, key
    # validation holds zeros only: AUROC cannot be computed there, the checkpoint is picked by val/loss
    assert "val/auroc" not in record and record["optimized_metric"] == "val/loss"


def test_the_threshold_comes_from_validation_and_travels_with_the_model(detected: tuple[Path, dict]) -> None:
    out, record = detected
    contract = read_checkpoint(out / "checkpoints" / "best.ckpt")["cnnlab"]["contract"]
    assert contract["threshold"] == pytest.approx(record["test/threshold"])
    assert contract["threshold_rule"] == "the 0.95 quantile of normal validation scores"
    exported = json.loads((out / "export" / "model.json").read_text())
    assert exported["threshold"] == contract["threshold"] and exported["score"] == "mean"
    batch, _ = digit_batch()
    for name in FORMAT_FILES:
        model = runtime.load(out / "export" / name)
        assert model.contract["threshold"] == contract["threshold"], name  # the contract inside the file
        # the decision is the graph's own: its scores against the threshold it holds as a buffer
        outputs = model(batch)
        assert torch.equal(outputs["anomalous"], outputs["scores"] >= contract["threshold"]), name
        assert outputs["anomalous"].any() and not outputs["anomalous"].all(), name


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_every_format_scores_every_image_as_the_checkpoint_does(
    detected: tuple[Path, dict], name: str
) -> None:
    out, _ = detected
    task = load_task(out / "checkpoints" / "best.ckpt").eval()
    model = runtime.load(out / "export" / name)
    batch, targets = digit_batch()
    with torch.no_grad():
        expected, expected_maps = task.anomaly_scores(batch, task.net(batch))
    outputs = model(batch)
    torch.testing.assert_close(outputs["scores"], expected, atol=1e-6, rtol=1e-4)
    assert outputs["maps"].shape == (len(batch), 16, 16)
    torch.testing.assert_close(outputs["maps"], expected_maps, atol=1e-6, rtol=1e-4)
    assert binary_auroc(outputs["scores"], targets["anomaly"]) > 0.8
    # measured when it was written, and recorded beside it
    described = json.loads((out / "export" / "model.json").read_text())["formats"][model.format]
    assert described["file"] == name and described["input_shape"] == ["dynamic", 1, "dynamic", "dynamic"]
    diffs = described["max_abs_diff"]
    assert diffs["scores"] < 1e-4 and diffs["maps"] < 1e-4 and diffs["anomalous"] == 0


def test_predict_gives_the_same_records_from_every_format(
    detected: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, record = detected
    images = write_digits(tmp_path / "digits", {0: 2, 7: 2})
    found = {name: predicted(capsys, out / "export" / name, images) for name in FORMAT_FILES}
    reference = found["model.pt"]
    assert [r["image"] for r in reference] == [str(p) for p in images]
    for r in reference:
        assert r["task"] == "anomaly" and r["threshold_source"] == "chosen on validation"
        assert r["threshold"] == pytest.approx(record["test/threshold"]) and r["anomalous"] == (
            r["score"] >= r["threshold"]
        )
        # the map at the network's size, over the whole 8 px image (resized to 16 px, nothing cropped)
        assert np.asarray(r["map"]).shape == (16, 16) and r["region"] == [0.0, 0.0, 8.0, 8.0]
        assert r["score"] == pytest.approx(np.mean(r["map"]), abs=1e-6)  # task.score=mean
    for records in found.values():
        assert_same_records(records, reference)


def test_tensorboard_shows_the_histogram_and_the_top_anomalies(detected: tuple[Path, dict]) -> None:
    out, _ = detected
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    expected = {"test/score_histogram", "test/top_anomalies", "test/codes", "test/reconstructions"}
    assert expected <= set(events.Tags()["images"])


def test_scores_reduce_the_map_as_configured() -> None:
    maps = torch.zeros(2, 10, 10)
    maps[0, :2, :5] = 1.0  # ten hot pixels in a hundred
    maps[1] = 0.05
    assert image_scores(maps, "mean", 0.01).tolist() == pytest.approx([0.1, 0.05])
    assert image_scores(maps, "max", 0.01).tolist() == pytest.approx([1.0, 0.05])
    assert image_scores(maps, "topk", 0.2).tolist() == pytest.approx([0.5, 0.05])  # mean of 20 pixels
    assert image_scores(maps, "topk", 0.001).tolist() == pytest.approx([1.0, 0.05])  # at least one pixel


def test_best_f1_threshold_separates_separable_scores() -> None:
    scores = torch.tensor([0.1, 0.2, 0.25, 0.6, 0.7, 0.3])
    flags = torch.tensor([0, 0, 0, 1, 1, 1])
    threshold = best_f1_threshold(scores, flags)
    assert threshold == pytest.approx(0.3)  # the lowest anomaly: every anomaly at or above, no normal image


def grey_images(flags: list[int], size: int = 8) -> list[tuple[torch.Tensor, dict]]:
    """Mid-grey images; an anomalous one has a white square of 9 pixels, which its mask marks."""
    items = []
    for i, flag in enumerate(flags):
        noise = torch.randn(1, size, size, generator=torch.Generator().manual_seed(i))
        image = torch.full((1, size, size), 0.5) + 0.01 * noise
        mask = torch.zeros(size, size, dtype=torch.int64)
        if flag:
            image[:, 2:5, 2:5], mask[2:5, 2:5] = 1.0, 1
        items.append((image.clamp(0, 1), {"anomaly": flag, "mask": mask}))
    return items


def validate(flags: list[int]) -> tuple[AnomalyTask, dict]:
    """Validate a network that outputs mid-grey for every image, so that its score is the distance to grey."""
    net = LinearAutoencoder(1, 8, hidden=(4,), bottleneck=2)
    last = net.decoder[-3]
    nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)  # sigmoid(0) = 0.5 everywhere
    task = AnomalyTask(net, ADAM, figures=False)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    loader = DataLoader(grey_images(flags), batch_size=4, collate_fn=stack_collate)
    return task, trainer.validate(task, dataloaders=loader, verbose=False)[0]


def test_validation_with_anomalies_picks_the_f1_best_threshold() -> None:
    task, metrics = validate([0, 0, 0, 0, 0, 1, 1, 1])
    assert task.threshold_rule == "best F1 on validation"
    assert metrics["val/auroc"] == 1.0 and metrics["val/f1"] == 1.0 and metrics["val/pixel_auroc"] > 0.99
    assert task.contract_extras()["threshold"] == pytest.approx(metrics["val/threshold"])


def test_validation_of_normal_images_takes_a_quantile_of_their_scores() -> None:
    task, metrics = validate([0] * 8)
    scores = torch.stack([((image - 0.5) ** 2).mean() for image, _ in grey_images([0] * 8)])
    assert task.threshold == pytest.approx(float(torch.quantile(scores, 0.95)), rel=1e-4)
    assert "the 0.95 quantile" in task.threshold_rule
    # neither AUROC nor pixel AUROC without anomalies
    assert "val/auroc" not in metrics and "val/pixel_auroc" not in metrics and "val/threshold" in metrics


def test_mvtec_category_with_defects_in_validation_selects_by_auroc(tmp_path: Path) -> None:
    category = write_mvtec(tmp_path / "mvtec", n_train=20, n_test_good=4, n_per_defect=4)
    record = run(
        tmp_path / "run",
        "task=anomaly",
        "model=autoencoder_conv",
        "model.widths=[8,16]",
        "model.bottleneck=4",
        "data=mvtec",
        f"data.root={category}",
        "data.val_from_test=0.5",
        "optimized_metric=val/auroc",
        "data.image_size=16",
        "data.batch_size=4",
        "data.num_workers=0",
        "optimizer=adam",
        "optimizer.lr=1e-2",
        "trainer.max_epochs=15",
        "trainer.log_every_n_steps=1",
    )
    assert record["test/auroc"] > 0.9 and record["test/pixel_auroc"] > 0.9
    assert record["best/val/auroc"] > 0.9 and "val/pixel_auroc" in record
    contract = json.loads((tmp_path / "run" / "export" / "model.json").read_text())
    assert contract["class_names"] == ["good", "crack", "scratch"]
    assert contract["threshold_rule"] == "best F1 on validation"


def test_labelled_data_without_normal_classes_says_how_to_pick_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.normal_classes=\[...\]"):
        run(tmp_path, "task=anomaly", "model=autoencoder_linear", "debug=fdr")


def test_selecting_by_auroc_without_anomalies_in_validation_is_refused(tmp_path: Path) -> None:
    overrides = [
        "experiment=ae_anomaly_digits",
        *ZEROS_ONLY,
        "optimized_metric=val/auroc",
        "trainer.max_epochs=1",
    ]
    with pytest.raises(
        ValueError, match="optimized_metric=val/auroc needs anomalous images in the validation"
    ):
        run(tmp_path, *overrides)


def test_pixel_auroc_counts_what_torchmetrics_counts() -> None:
    """The one-pass count gives torchmetrics' own confusion counts and AUROC: over batches larger and smaller
    than the 50,000 scores where torchmetrics changes method, with ignored pixels, scores exactly on a
    threshold (which reach it) and NaN scores (which reach none)."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 160, 160, generator=generator) ** 4  # squared errors crowd near 0
    masks = (torch.rand(4, 160, 160, generator=generator) > 0.9).long()
    masks[0, :8] = IGNORE_INDEX
    maps[1, :4] = PIXEL_THRESHOLDS[200]
    maps[2, 0], maps[2, 1], maps[2, 2, :3] = 0.0, 1.0, torch.nan
    ours = BinnedAUROC(PIXEL_THRESHOLDS, ignore_index=IGNORE_INDEX)
    # no sigmoid on either side: torchmetrics would apply one to a batch holding a NaN or a value above 1
    reference = BinaryAUROC(thresholds=PIXEL_THRESHOLDS, ignore_index=IGNORE_INDEX, normalization=None)
    for batch in ((maps[:3], masks[:3]), (maps[3:], masks[3:])):  # 76,800 scores, then 25,600
        ours.update(*batch)
        reference.update(*batch)
    assert torch.equal(ours.confmat, reference.confmat)
    assert int(ours.confmat[0].sum()) == int((masks != IGNORE_INDEX).sum())
    assert float(ours.compute()) == pytest.approx(float(reference.compute()), abs=1e-7)
