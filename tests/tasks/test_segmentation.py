"""The segmentation task: its losses and metrics skip ignored pixels, a tiny run learns, the per-class IoU
reaches metrics.json and the log, TensorBoard gets overlays, every export format gives the module's class map
and predict the same records from each, and the presets keep every mask on its pixels."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)
from torchvision import tv_tensors

from cnnlab import CONF_DIR
from cnnlab.checkpoints import load_task
from cnnlab.config import ConfigError, check_pairing
from cnnlab.data import segmentation_presets as presets
from cnnlab.data import transforms as T
from cnnlab.data.shapes import ShapesDataModule, ShapesDataset
from cnnlab.predict import main as predict
from cnnlab.samples import IGNORE_INDEX, SampleDataset
from cnnlab.serving import runtime, segmentation
from cnnlab.tasks.segmentation import (
    PixelScores,
    SegmentationTask,
    class_table,
    cross_entropy,
    dice_loss,
    metric_names,
)

from .test_autoencoder import ALL_FORMATS, FORMAT_FILES, assert_same_records, predicted

OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-3}
# a run small enough for a test: 32 px shapes, a two-level UNet (each level more makes exporting it
# seconds slower: torch.export reasons about every padded size), six epochs
TINY = [
    "experiment=seg_shapes_unet",
    "data.train_size=120",
    "data.test_size=24",
    "data.image_size=32",
    "data.objects=[1,2]",
    "data.object_size=[0.35,0.6]",
    "data.batch_size=16",
    "data.val_fraction=0.2",
    "model.widths=[8,16]",
    "optimizer.lr=0.01",
    "trainer.max_epochs=6",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "task.figure_images=3",
]
CLASSES = ["background", "circle", "square", "triangle"]


def compose_cfg(*overrides: str, config_name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """One short run of the seg_shapes_unet recipe at a tiny size, exported in every format, shared by the
    tests below."""
    from cnnlab.train import train

    out = tmp_path_factory.mktemp("seg_run")
    cfg = compose_cfg(*TINY, ALL_FORMATS)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    records = Records()
    logger = logging.getLogger("cnnlab.tasks.segmentation")
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        record = train(cfg)
    finally:
        logger.removeHandler(records)
    return out, record, records.messages


@pytest.fixture(scope="module")
def exported(tiny_run: tuple[Path, dict, list[str]]) -> Callable[[str], runtime.Model]:
    """Each file of the run's export, loaded once for the tests below: reading this net's .pt2 back takes
    seconds (torch.export parses every symbolic size of the graph)."""
    return cache(lambda name: runtime.load(tiny_run[0] / "export" / name))


def scalars(run: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


# --- a tiny run ---------------------------------------------------------------------------------------------


def test_loss_falls_and_miou_rises(tiny_run: tuple[Path, dict, list[str]]) -> None:
    out, record, _ = tiny_run
    losses, mious = scalars(out, "train/loss_epoch"), scalars(out, "val/miou")
    assert len(losses) == len(mious) == 6
    assert losses[-1] < 0.6 * losses[0]
    assert max(mious[-2:]) > mious[0] + 0.15
    assert record["optimized_metric"] == "val/miou" and record["optimized_mode"] == "max"
    assert record["best/val/miou"] == pytest.approx(max(mious))


def test_metrics_json_has_every_metric_and_the_iou_of_each_class(
    tiny_run: tuple[Path, dict, list[str]],
) -> None:
    out, record, messages = tiny_run
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test/miou", "test/dice", "test/pixel_acc", "val/miou", "val/dice", "val/pixel_acc"):
        assert 0.0 <= saved[key] <= 1.0, key
    per_class = [saved[f"test/iou/{name}"] for name in ("background", "circle", "square", "triangle")]
    assert all(0.0 <= value <= 1.0 for value in per_class)
    # every class is in the test images: the mean of the per-class IoUs is the mIoU
    assert saved["test/miou"] == pytest.approx(sum(per_class) / 4, abs=1e-4)
    table = next(m for m in messages if m.startswith("per-class IoU on the test split"))
    lines = table.splitlines()
    assert lines[1].split() == ["class", "IoU", "pixels"]
    assert [line.split()[0] for line in lines[2:]] == ["background", "circle", "square", "triangle"]
    assert float(lines[2].split()[1]) == pytest.approx(per_class[0], abs=1e-3)


def test_tensorboard_shows_overlays_and_the_dashboard_row(tiny_run: tuple[Path, dict, list[str]]) -> None:
    out, _, _ = tiny_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    overlays = events.Images("val/overlays")
    assert len(overlays) == 6  # one figure per epoch, none for the sanity check
    session = events.PluginTagToContent("hparams")["_hparams_/session_start_info"].decode("latin1")
    assert "seg_loss" in session and "aux_weight" in session


def differing(a: object, b: object) -> float:
    """The share of pixels whose class differs between two class maps."""
    return float((torch.as_tensor(a) != torch.as_tensor(b)).float().mean())


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_every_format_gives_the_class_map_of_the_checkpoint(
    tiny_run: tuple[Path, dict, list[str]], exported: Callable[[str], runtime.Model], name: str
) -> None:
    out, record, _ = tiny_run
    task = load_task(record["best_checkpoint"]).eval()
    model = exported(name)
    assert model.class_names == CLASSES
    datamodule = instantiate(compose_cfg(*TINY).data, spec=SegmentationTask.samples)
    datamodule.setup("test")
    raw = datamodule.load_split("test")
    batch = torch.cat([runtime.as_batch(raw[i][0], 3) for i in range(8)])
    with torch.no_grad():
        expected = task(torch.stack([datamodule.test_set[i][0] for i in range(8)])).argmax(1)
    outputs = model(batch)
    assert outputs["classes"].dtype == torch.int64 and differing(outputs["classes"], expected) <= 1e-3
    # measured when it was written, and recorded beside it
    described = json.loads((out / "export" / "model.json").read_text())["formats"][model.format]
    assert described["file"] == name and described["input_shape"] == ["dynamic", 3, "dynamic", "dynamic"]
    diffs = described["max_abs_diff"]
    assert diffs["probabilities"] < 1e-4 and diffs["classes"] <= 1e-3  # the share of pixels that differ


@pytest.mark.parametrize(
    "name",
    ["model.pt2", "model.onnx", "model.pt"],
)
def test_every_format_takes_images_of_any_size(
    tiny_run: tuple[Path, dict, list[str]], exported: Callable[[str], runtime.Model], name: str
) -> None:
    _, record, _ = tiny_run
    task = load_task(record["best_checkpoint"]).eval()
    model = exported(name)
    module = segmentation.wrap(task.net, task.contract).eval()  # what was exported, in eager mode
    for height, width in ((45, 71), (32, 33)):
        photo = runtime.as_batch(torch.randint(0, 256, (3, height, width), dtype=torch.uint8), 3)
        outputs = model(photo)
        # the class map comes back at the input's size, with the probabilities it is made of
        assert outputs["classes"].shape == (1, height, width)
        assert outputs["probabilities"].shape == (1, 4, height, width)
        torch.testing.assert_close(outputs["probabilities"].sum(1), torch.ones(1, height, width))
        assert differing(outputs["probabilities"].argmax(1), outputs["classes"]) <= 1e-3
        with torch.no_grad():
            expected = module(photo)[0]
        assert differing(outputs["classes"], expected) <= 1e-3


def test_predict_gives_the_same_records_from_every_format(
    tiny_run: tuple[Path, dict, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = tiny_run
    images = [tmp_path / "small.png", tmp_path / "wide.png"]
    Image.fromarray(ShapesDataset(1, image_size=32, seed=5)[0][0].permute(1, 2, 0).numpy()).save(images[0])
    wide = ShapesDataset(1, image_size=60, seed=6)[0][0][:, :40, :]
    Image.fromarray(wide.permute(1, 2, 0).contiguous().numpy()).save(images[1])
    found = {name: predicted(capsys, out / "export" / name, images) for name in FORMAT_FILES}
    reference = found["model.pt"]
    assert [(r["image"], r["size"]) for r in reference] == [
        (str(images[0]), [32, 32]),
        (str(images[1]), [40, 60]),
    ]
    for record in reference:
        assert record["task"] == "segmentation" and {s["class"] for s in record["shares"]} <= set(CLASSES)
        assert sum(s["share"] for s in record["shares"]) == pytest.approx(1.0, abs=1e-5)
        pixels = np.bincount(np.asarray(record["classes"]).flatten(), minlength=4)
        assert [s["index"] for s in record["shares"]] == [
            i for i in np.argsort(-pixels, kind="stable") if pixels[i]
        ]
    plain = ("classes", "shares")
    for records in found.values():
        for got, want in zip(records, reference, strict=True):
            # a pixel where two classes score alike may go either way: maps and shares agree within a pixel
            assert differing(got["classes"], want["classes"]) <= 1e-3
            shares = {s["class"]: s["share"] for s in got["shares"]}
            assert shares == pytest.approx({s["class"]: s["share"] for s in want["shares"]}, abs=1e-3)
            assert_same_records(
                {k: v for k, v in got.items() if k not in plain},
                {k: v for k, v in want.items() if k not in plain},
            )


def test_predict_writes_a_palette_mask_and_an_overlay_per_image(
    tiny_run: tuple[Path, dict, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, _, _ = tiny_run
    photo = ShapesDataset(1, image_size=48, seed=3)[0][0][:, :40, :]
    paths = [tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png"]  # one name, two folders: b_photo
    for path in paths:
        path.parent.mkdir()
        Image.fromarray(photo.permute(1, 2, 0).contiguous().numpy()).save(path)
    with pytest.raises(SystemExit) as exit_code:
        predict([str(out / "export" / "model.pt"), *map(str, paths), "--out", str(tmp_path / "preds")])
    assert exit_code.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in printed[:2]] == [str(p) for p in paths]
    assert printed[0].endswith(f" -> {tmp_path / 'preds' / 'photo_mask.png'}")
    assert printed[2] == f"masks and overlays written to {tmp_path / 'preds'}"
    model = runtime.load(out / "export" / "model.pt")
    expected = model(runtime.as_batch(photo, 3))["classes"][0].numpy()
    for stem in ("photo", "b_photo"):
        mask = Image.open(tmp_path / "preds" / f"{stem}_mask.png")
        overlay = Image.open(tmp_path / "preds" / f"{stem}_overlay.png")
        assert mask.mode == "P" and overlay.mode == "RGB" and mask.size == overlay.size == (48, 40)
        assert np.array_equal(np.asarray(mask), expected)
    # the line leads with the class covering most pixels
    largest = CLASSES[int(np.bincount(expected.flatten(), minlength=4).argmax())]
    assert printed[0].split(": ")[1].startswith(f"{largest} ")


def test_evaluate_reproduces_the_test_metrics(tiny_run: tuple[Path, dict, list[str]], tmp_path: Path) -> None:
    from cnnlab.evaluate import evaluate

    _, record, _ = tiny_run
    cfg = compose_cfg(f"ckpt_path={record['best_checkpoint']}", "trainer.accelerator=cpu", config_name="eval")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.trainer.enable_progress_bar = False
    metrics = evaluate(cfg)
    for key in ("test/miou", "test/dice", "test/pixel_acc", "test/iou/circle"):
        assert metrics[key] == pytest.approx(record[key], abs=1e-6), key


# --- losses and metrics -------------------------------------------------------------------------------------


def test_cross_entropy_skips_ignored_pixels_and_survives_a_batch_of_them() -> None:
    scores = torch.randn(2, 3, 5, 5)
    mask = torch.randint(0, 3, (2, 5, 5))
    mask[0, :2] = IGNORE_INDEX
    kept = mask != IGNORE_INDEX
    expected = F.cross_entropy(scores.permute(0, 2, 3, 1)[kept], mask[kept])
    torch.testing.assert_close(cross_entropy(scores, mask), expected)
    weights = torch.tensor([0.5, 1.0, 2.0])
    weighted = F.cross_entropy(scores, mask, weight=weights, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(cross_entropy(scores, mask, weights), weighted)
    everything_ignored = torch.full((2, 5, 5), IGNORE_INDEX)
    assert cross_entropy(scores, everything_ignored).item() == 0.0
    assert dice_loss(scores, everything_ignored).isfinite()


def test_dice_loss_is_small_when_right_large_when_wrong_and_blind_to_ignored_pixels() -> None:
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 2:6, 2:6] = 1
    right = F.one_hot(mask, 2).permute(0, 3, 1, 2).float() * 20
    assert dice_loss(right, mask) < 0.01
    assert dice_loss(-right, mask) > 0.9
    # what the network says on ignored pixels changes nothing
    hidden = mask.clone()
    hidden[0, :, :2] = IGNORE_INDEX
    noisy = right.clone()
    noisy[..., :2] = torch.randn(1, 2, 8, 2) * 20
    torch.testing.assert_close(dice_loss(noisy, hidden), dice_loss(right, hidden))


def quiet(task: SegmentationTask, monkeypatch: pytest.MonkeyPatch) -> SegmentationTask:
    monkeypatch.setattr(task, "log", lambda *args, **kwargs: None)
    monkeypatch.setattr(task, "log_dict", lambda *args, **kwargs: None)
    return task


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
def test_each_loss_option_is_what_it_names(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = nn.Conv2d(3, 3, 1)
    net.output = "pixel_scores"
    task = quiet(
        SegmentationTask(net, 3, OPTIMIZER, loss=kind, class_weights=[1, 2, 3], figures=False), monkeypatch
    )
    images, mask = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    weights = torch.tensor([1.0, 2.0, 3.0])
    scores = net(images)
    parts = {"ce": cross_entropy(scores, mask, weights), "dice": dice_loss(scores, mask, weights)}
    expected = sum(parts[name] for name in kind.split("+"))
    torch.testing.assert_close(task.training_step((images, {"mask": mask}), 0), expected)


class AuxNet(nn.Module):
    """Stands for torchvision's segmenters with ``aux_loss=True``: main and auxiliary scores."""

    output = "pixel_scores"
    aux_loss = True

    def __init__(self) -> None:
        super().__init__()
        self.main, self.aux = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)

    def forward_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.main(x), "aux": self.aux(x)}


def test_the_auxiliary_head_adds_its_weighted_loss_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    net = AuxNet()
    task = quiet(SegmentationTask(net, 2, OPTIMIZER, aux_weight=0.4, figures=False), monkeypatch)
    images, mask = torch.randn(2, 3, 6, 6), torch.randint(0, 2, (2, 6, 6))
    expected = cross_entropy(net.main(images), mask) + 0.4 * cross_entropy(net.aux(images), mask)
    torch.testing.assert_close(task.training_step((images, {"mask": mask}), 0), expected)
    loss = task.training_step((images, {"mask": mask}), 0)
    loss.backward()
    assert net.aux.weight.grad is not None and net.aux.weight.grad.abs().sum() > 0


def test_per_class_iou_comes_from_the_confusion_matrix() -> None:
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    iou, table = class_table(confusion, ["background", "road", "lake"])
    torch.testing.assert_close(iou[:2], torch.tensor([0.75, 2 / 3]))
    assert iou[2].isnan()  # neither true nor predicted anywhere: no IoU to speak of
    rows = table.splitlines()
    assert rows[1].split() == ["background", "0.750", "66.7%"] and rows[3].split() == ["lake", "n/a", "0.0%"]
    assert metric_names(["person", "potted plant", "a/b", "a b"]) == ["person", "potted_plant", "a_b", "a_b_"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"loss": "focal"}, r"task.loss='focal'.*ce, dice, ce\+dice"),
        ({"class_weights": [1.0, 2.0]}, r"task.class_weights=\[1.0, 2.0\]: give 3 non-negative weights"),
        ({"class_weights": [1.0, -1.0, 1.0]}, "non-negative"),
    ],
)
def test_bad_options_say_what_to_give(options: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        SegmentationTask(nn.Conv2d(3, 3, 1), 3, OPTIMIZER, **options)


def test_a_mask_beyond_num_classes_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    task = quiet(SegmentationTask(nn.Conv2d(3, 3, 1), 3, OPTIMIZER, figures=False), monkeypatch)
    mask = torch.full((1, 4, 4), 5)
    with pytest.raises(ConfigError, match=r"class 5 but task.num_classes=3.*set data.num_classes"):
        task.on_before_batch_transfer((torch.randn(1, 3, 4, 4), {"mask": mask}), 0)
    mask[0, 0, 0] = -1  # some datasets mark ignored pixels -1
    with pytest.raises(ConfigError, match=r"class -1: classes are 0 to 2, and 255 marks the pixels"):
        task.on_before_batch_transfer((torch.randn(1, 3, 4, 4), {"mask": mask}), 0)
    mask[:] = IGNORE_INDEX
    task.on_before_batch_transfer((torch.randn(1, 3, 4, 4), {"mask": mask}), 0)  # ignored pixels pass


class Predicts(nn.Module):
    """A network that scores every pixel as the class map it is given."""

    output = "pixel_scores"

    def __init__(self, classes: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.classes, self.num_classes = classes, num_classes
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.one_hot(self.classes, self.num_classes).permute(0, 3, 1, 2).float()


def half(top: int, bottom: int, corner: int | None = None) -> torch.Tensor:
    """A 4 x 4 class map: ``top`` in the first two rows, ``bottom`` in the last two, ``corner`` at (0, 0)."""
    classes = torch.tensor([top, top, bottom, bottom])[:, None].expand(4, 4)[None].clone()
    if corner is not None:
        classes[0, 0, 0] = corner
    return classes


@pytest.mark.parametrize(
    ("classes", "mask", "predicted", "miou", "dice"),
    [
        # classes 2 and 3 have no pixels, true or predicted: left out of the mean (not 1.0, not 0)
        (4, half(1, 0), half(1, 0, corner=0), (8 / 9 + 7 / 8) / 2, (16 / 17 + 14 / 15) / 2),
        # the object is true but never predicted: it counts 0, so a background-only model is far from 1.0
        (2, half(1, 0), half(0, 0), 0.5 / 2, (2 / 3) / 2),
        # an object labelled 255 (ignored) is invisible: why black-and-white masks are refused at setup
        (2, half(IGNORE_INDEX, 0), half(0, 0), 1.0, 1.0),
    ],
)
def test_mean_iou_and_dice_average_over_the_classes_with_pixels(
    classes: int,
    mask: torch.Tensor,
    predicted: torch.Tensor,
    miou: float,
    dice: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = Predicts(predicted, classes)
    task = quiet(SegmentationTask(net, classes, OPTIMIZER, figures=False), monkeypatch)
    task.validation_step((torch.zeros(1, 3, 4, 4), {"mask": mask}), 0)
    found = task.val_metrics.compute()
    assert found["val/miou"].item() == pytest.approx(miou) and found["val/dice"].item() == pytest.approx(dice)


@pytest.mark.parametrize("seed", range(3))
def test_pixel_scores_are_torchmetrics_macro_averages_and_confusion(seed: int) -> None:
    """Counted by one scatter, the scores are what torchmetrics' own metrics give: over several batches of
    other sizes, with ignored pixels and a class that appears nowhere."""
    generator = torch.Generator().manual_seed(seed)
    k = 5
    ours = PixelScores(k, ignore_index=IGNORE_INDEX, validate_args=False)
    options = {"ignore_index": IGNORE_INDEX}
    theirs = {
        "miou": MulticlassJaccardIndex(k, average="macro", **options),
        "dice": MulticlassF1Score(k, average="macro", **options),
        "pixel_acc": MulticlassAccuracy(k, average="micro", **options),
        "confusion": MulticlassConfusionMatrix(k, **options),
    }
    for size in (6, 9, 4):
        preds = torch.randint(0, k - 1, (2, size, size + 1), generator=generator)  # class 4: never
        mask = torch.randint(0, k - 1, (2, size, size + 1), generator=generator)
        mask[torch.rand(mask.shape, generator=generator) < 0.2] = IGNORE_INDEX
        for metric in (ours, *theirs.values()):
            metric.update(preds, mask)
    found = ours.compute()
    for name in ("miou", "dice", "pixel_acc"):
        assert found[name].item() == pytest.approx(theirs[name].compute().item(), abs=1e-6), name
    assert torch.equal(ours.confusion(), theirs["confusion"].compute())


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 3.0]])
def test_a_step_reads_nothing_back_from_the_device(
    weights: list | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loss and metric updates run on the meta device, which holds no values: nothing in a step selects by
    value, sorts or counts on the host (torchmetrics' own updates do), so on a GPU no step waits for it."""
    net = nn.Conv2d(3, 3, 1)
    net.output = "pixel_scores"
    task = SegmentationTask(net, 3, OPTIMIZER, loss="ce+dice", class_weights=weights, figures=False)
    task = quiet(task, monkeypatch).to("meta")
    images = torch.randn(2, 3, 8, 8, device="meta")
    batch = (images, {"mask": torch.randint(0, 3, (2, 8, 8), device="meta")})
    assert task.training_step(batch, 0).device.type == "meta"
    task.validation_step(batch, 0)
    task.test_step(batch, 0)
    assert task.val_metrics["pixels"].update_called and task.test_metrics["pixels"].update_called
    reference = MulticlassJaccardIndex(3, ignore_index=IGNORE_INDEX, validate_args=False).to("meta")
    with pytest.raises(NotImplementedError):  # what the test stands on: torchmetrics' update reads values
        reference.update(batch[1]["mask"], batch[1]["mask"])


def test_pairing_names_the_models_and_datasets_that_fit() -> None:
    with pytest.raises(ConfigError, match=r"Models for task=segmentation: deeplabv3, fcn, lraspp, unet"):
        check_pairing(compose_cfg("task=segmentation", "data=shapes", "model=simple_cnn"))
    with pytest.raises(
        ConfigError, match=r"needs a class per pixel.*Datasets for task=segmentation: .*mask_folder.*shapes"
    ):
        check_pairing(compose_cfg("task=segmentation", "data=digits", "model=unet"))
    check_pairing(compose_cfg("experiment=seg_shapes_unet"))


# --- joint transforms ---------------------------------------------------------------------------------------

#: a colour per class, far apart, so every pixel's colour says its class
CLASS_COLOURS = torch.tensor([[0, 0, 0], [250, 30, 30], [30, 250, 30], [30, 30, 250]], dtype=torch.uint8)


def painted_sample(height: int = 48, width: int = 72) -> tuple[tv_tensors.Image, dict]:
    """Rectangles of classes 1-3 on class 0, each pixel painted in its class's colour: a known mask."""
    mask = torch.zeros(height, width, dtype=torch.int64)
    mask[5:30, 8:30] = 1
    mask[20:44, 40:66] = 2
    mask[34:46, 4:20] = 3
    mask[8:14, 50:70] = 3
    image = CLASS_COLOURS[mask].permute(2, 0, 1).contiguous()
    return tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)}


def assert_aligned(image: torch.Tensor, mask: torch.Tensor) -> None:
    """Every pixel away from a class edge has its class's colour; padded pixels are black and ignored."""
    colours = CLASS_COLOURS.float() / 255
    known = mask != IGNORE_INDEX
    # away from edges: the 5x5 neighbourhood holds one class (resizing blends colours at edges, and the
    # crop's border may cut through such a blend, so it counts as an edge too)
    padded = F.pad(mask[None, None].float(), (2, 2, 2, 2), value=-1.0)
    spread = F.max_pool2d(padded, 5, 1) + F.max_pool2d(-padded, 5, 1)
    inner = known & (spread[0, 0] == 0)
    assert inner.sum() > 0.3 * known.sum()
    expected = colours[mask.clamp_max(3)].permute(2, 0, 1)
    assert (image - expected).abs().amax(0)[inner].max() < 0.08
    assert (image[:, ~known] == 0).all()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    "preset",
    [
        partial(presets.basic, crop_size=40, padding=6, hflip=0.5, vflip=0.5),
        partial(presets.standard, crop_size=40, scale=(0.5, 1.5), vflip=0.5, jitter=0),
    ],
    ids=["seg_basic", "seg_standard"],
)
def test_presets_keep_every_mask_on_its_pixels(preset, seed: int) -> None:
    transform = T.train_transform(preset, 48, 48, None, None, geometry="resize")
    dataset = SampleDataset([painted_sample()], transform, keys=("mask",))
    torch.manual_seed(seed)
    image, target = dataset[0]
    mask = target["mask"].as_subclass(torch.Tensor)
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert_aligned(image.as_subclass(torch.Tensor), mask)


def test_crops_larger_than_the_image_pad_with_black_and_ignored_pixels() -> None:
    transform = T.train_transform(partial(presets.basic, crop_size=64, hflip=0), 40, 40, None, None)
    image, target = SampleDataset([painted_sample()], transform, keys=("mask",))[0]
    mask = target["mask"].as_subclass(torch.Tensor)
    # the shorter side at 40 px: a 40 x 60 image inside a 64 x 64 crop
    assert image.shape == (3, 64, 64) and (mask == IGNORE_INDEX).sum() == 64 * 64 - 40 * 60
    assert_aligned(image.as_subclass(torch.Tensor), mask)


def test_scale_jitter_draws_sizes_within_its_range() -> None:
    steps = presets.standard(100, 100, scale=(0.5, 2.0))
    sizes = set()
    for seed in range(30):
        torch.manual_seed(seed)
        sizes.add(steps[0].make_params([])["size"][0])
    assert min(sizes) >= 50 and max(sizes) <= 200 and len(sizes) > 10
    with pytest.raises(ConfigError, match=r"augmentation.scale=\[2.0, 1.0\]"):
        presets.standard(100, 100, scale=(2.0, 1.0))


def test_evaluation_keeps_the_whole_image() -> None:
    datamodule = ShapesDataModule(train_size=8, test_size=4, image_size=32, spec=SegmentationTask.samples)
    datamodule.setup()
    image, target = datamodule.test_set[0]
    assert image.shape == (3, 32, 32) and target["mask"].shape == (32, 32)
    wide = T.eval_transform(32, 32, None, None, SegmentationTask.samples.eval_geometry)
    image, target = SampleDataset([painted_sample()], wide, keys=("mask",))[0]
    # the shorter side at 32 px and nothing cut off: 48 x 72 becomes 32 x 48
    assert image.shape == (3, 32, 48) and target["mask"].shape == (32, 48)
