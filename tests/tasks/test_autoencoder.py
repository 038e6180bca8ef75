"""The autoencoder task: denoising beats its noisy input, the noise and losses, figures, export in every
format, predict, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab import CONF_DIR
from cnnlab.checkpoints import load_task
from cnnlab.data.digits import DigitsDataModule
from cnnlab.errors import ConfigError
from cnnlab.figures.autoencoder import project_2d
from cnnlab.models.autoencoders import LinearAutoencoder
from cnnlab.predict import main as predict
from cnnlab.samples import SampleSpec
from cnnlab.serving import runtime
from cnnlab.tasks.autoencoder import AutoencoderTask, add_noise, reconstruction_loss
from cnnlab.train import train

ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}
#: the files of an export folder, one per format
FORMAT_FILES = ["model.pt2", "model.onnx", "model.pt"]
ALL_FORMATS = "export.formats=[pt2,onnx,torchscript]"


def run(out: Path, *overrides: str) -> dict:
    """Train with the real configs into ``out``, quietly, on the CPU; exported in one format, the quickest to
    write, unless an override says otherwise (ALL_FORMATS)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["trainer.accelerator=cpu", *overrides])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        for key in ("progress_bar", "model_summary"):
            cfg.callbacks.pop(key)
        if cfg.get("export") and not any(o.startswith(("export", "+export")) for o in overrides):
            cfg.export.formats = ["torchscript"]
    return train(cfg)


def write_digits(folder: Path, counts: dict[int, int]) -> list[Path]:
    """Real scans of the embedded digits as 8 px grey PNGs, ``<digit>_<n>.png``, from the end of the set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for digit, count in counts.items():
        picked = np.flatnonzero(digits.target == digit)[-count:]
        for n, index in enumerate(picked):
            path = folder / f"{digit}_{n}.png"
            Image.fromarray((digits.images[index] * 255 / 16).astype("uint8")).save(path)
            paths.append(path)
    return paths


def predicted(
    capsys: pytest.CaptureFixture[str], model: Path, images: list[Path], *options: str
) -> list[dict]:
    """The records ``cnnlab-predict MODEL IMAGE... --json`` prints."""
    with pytest.raises(SystemExit) as exit_code:
        predict([str(model), *map(str, images), "--json", *options])
    assert exit_code.value.code == 0
    return json.loads(capsys.readouterr().out)


def assert_same_records(found: object, expected: object, rel: float = 1e-4, tol: float = 2e-4) -> None:
    """Records alike in every key, string, flag and whole number, their floats within ``rel`` or ``tol``
    (beyond the rounding of records: 4 decimals for pixels, 3 for decibels)."""

    def compare(a: object, b: object, where: str) -> None:
        if isinstance(b, dict):
            assert isinstance(a, dict) and a.keys() == b.keys(), where
            for key in b:
                compare(a[key], b[key], f"{where}.{key}")
        elif isinstance(b, list):
            assert isinstance(a, list) and len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                compare(x, y, f"{where}[{i}]")
        elif isinstance(b, float):
            assert a == pytest.approx(b, rel=rel, abs=tol), where
        else:
            assert a == b, where

    compare(found, expected, "records")


@pytest.fixture(scope="module")
def denoised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The ae_denoise_digits recipe, shortened: three epochs of a narrower network on 40 digits per class;
    exported in every format."""
    out = tmp_path_factory.mktemp("denoise")
    short = ["trainer.max_epochs=3", "model.widths=[8,16]", "data.train_per_class=40", "data.batch_size=16"]
    return out, run(out, "experiment=ae_denoise_digits", *short, "optimizer.lr=1e-2", ALL_FORMATS)


def test_denoising_raises_psnr_and_ssim_over_the_noisy_input(denoised: tuple[Path, dict]) -> None:
    out, record = denoised
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(record))
    for split in ("val", "test"):
        assert record[f"{split}/psnr_gain"] > 3.0  # decibels, after three short epochs
        assert record[f"{split}/psnr_gain"] == pytest.approx(
            record[f"{split}/psnr"] - record[f"{split}/psnr_noisy"], abs=1e-4
        )
        assert record[f"{split}/ssim"] > record[f"{split}/ssim_noisy"] + 0.2
    assert record["optimized_metric"] == "val/psnr" and record["optimized_mode"] == "max"


def test_tensorboard_shows_reconstructions_codes_and_the_noise_settings(denoised: tuple[Path, dict]) -> None:
    out, _ = denoised
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"val/reconstructions", "test/reconstructions", "test/codes"} <= set(events.Tags()["images"])
    # one validation grid per epoch: the model's progress on the same noisy images
    assert len(events.Images("val/reconstructions")) == 3
    session = events.PluginTagToContent("hparams")["_hparams_/session_start_info"].decode("latin1")
    assert "noise_level" in session and "denoise" in session


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_every_format_returns_the_checkpoints_reconstruction(denoised: tuple[Path, dict], name: str) -> None:
    out, _ = denoised
    task = load_task(out / "checkpoints" / "best.ckpt").eval()
    model = runtime.load(out / "export" / name)
    datamodule = DigitsDataModule(image_size=16, seed=42, spec=AutoencoderTask.samples)
    datamodule.setup()
    images, _ = next(iter(datamodule.test_dataloader()))
    raw = (images[:4] * 255).round().to(torch.uint8)  # what a PNG file holds
    batch = torch.cat([runtime.as_batch(image, 1) for image in raw])
    outputs = model(batch)
    with torch.no_grad():
        expected = task.net(batch)
    torch.testing.assert_close(outputs["reconstructions"], expected, atol=1e-5, rtol=1e-4)
    errors = (expected - batch).pow(2).flatten(1).mean(dim=1)
    torch.testing.assert_close(outputs["errors"], errors, atol=1e-6, rtol=1e-4)
    contract = model.contract  # carried inside the file
    assert contract["task"] == "autoencoder" and contract["mode"] == "denoise" and contract["mean"] == []
    assert contract["serving"] == "cnnlab.serving.autoencoder"
    assert contract["outputs"] == ["reconstructions", "errors"]
    # a larger, non-square image: resized and cropped to the network's size inside the graph
    assert model(torch.rand(1, 1, 25, 23))["reconstructions"].shape == (1, 1, 16, 16)
    # measured when it was written, and recorded beside it
    described = json.loads((out / "export" / "model.json").read_text())["formats"][model.format]
    assert described["file"] == name and described["bytes"] == (out / "export" / name).stat().st_size
    assert described["max_abs_diff"]["reconstructions"] < 1e-4 and described["max_abs_diff"]["errors"] < 1e-4


def test_predict_gives_the_same_records_from_every_format(
    denoised: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = denoised
    images = write_digits(tmp_path / "digits", {3: 1, 8: 1})
    found = {name: predicted(capsys, out / "export" / name, images) for name in FORMAT_FILES}
    reference = found["model.pt"]
    assert [record["image"] for record in reference] == [str(p) for p in images]
    for record in reference:
        assert record["task"] == "autoencoder" and record["mode"] == "denoise"
        assert np.asarray(record["reconstruction"]).shape == (1, 16, 16) and 0 < record["error"] < 1
        assert record["psnr"] == pytest.approx(10 * np.log10(1 / record["error"]), abs=1e-3)
    for records in found.values():
        assert_same_records(records, reference)


def test_predict_writes_reconstructions_and_prints_their_error(
    denoised: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = denoised
    images = write_digits(tmp_path / "digits", {3: 2})
    (tmp_path / "more").mkdir()
    images.append(Path(shutil.copy(images[0], tmp_path / "more")))  # the same name in another folder
    with pytest.raises(SystemExit) as exit_code:
        # the export folder: its first verified format
        predict([str(out / "export"), *map(str, images), "--out", str(tmp_path / "rec")])
    assert exit_code.value.code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ": error " in line]
    assert [line.split(":")[0] for line in lines] == [str(p) for p in images]
    assert all(0 < float(line.split(": error ")[1].split()[0]) < 1 for line in lines)
    assert lines[0].endswith(f" -> {tmp_path / 'rec' / '3_0.png'}")
    written = sorted(p.name for p in (tmp_path / "rec").glob("*.png"))
    assert written == ["3_0.png", "3_1.png", "more_3_0.png"]
    with Image.open(tmp_path / "rec" / "3_0.png") as picture:
        assert picture.size == (16, 16) and picture.mode == "L"  # the model's image size, grey like its input


def test_reconstruction_logs_no_noisy_metrics(tmp_path: Path) -> None:
    record = run(tmp_path, "task=autoencoder", "model=autoencoder_linear", "debug=fdr")
    assert {"test/loss", "test/psnr", "test/ssim"} <= set(record)
    assert not [key for key in record if "noisy" in key or "gain" in key]


@pytest.mark.parametrize("kind", ["gaussian", "salt_pepper", "masking"])
def test_noise_is_seeded_and_of_the_requested_strength(kind: str) -> None:
    images = torch.full((8, 3, 32, 32), 0.5)
    noisy = add_noise(images, kind, 0.2, torch.Generator().manual_seed(1))
    assert noisy.shape == images.shape and noisy.min() >= 0 and noisy.max() <= 1
    torch.testing.assert_close(noisy, add_noise(images, kind, 0.2, torch.Generator().manual_seed(1)))
    assert not torch.equal(noisy, add_noise(images, kind, 0.2, torch.Generator().manual_seed(2)))
    if kind == "gaussian":
        assert (noisy - images).std().item() == pytest.approx(0.2, rel=0.05)
        return
    hit = noisy != images
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.02)
    # a hit pixel is hit in every channel: a dead pixel, not a colour shift
    assert torch.equal(hit.all(dim=1), hit.any(dim=1))
    expected = {0.0, 1.0} if kind == "salt_pepper" else {0.0}
    assert set(noisy[hit].unique().tolist()) == expected


@pytest.mark.parametrize("kind", ["mse", "l1", "bce", "ssim"])
def test_every_loss_prefers_the_closer_reconstruction(kind: str) -> None:
    target = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    close = (target + 0.05 * torch.randn(target.shape)).clamp(0.01, 0.99)
    far = (target + 0.3 * torch.randn(target.shape)).clamp(0.01, 0.99)
    assert reconstruction_loss(kind, close, target) < reconstruction_loss(kind, far, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: computed in float32, no error
        assert torch.isfinite(reconstruction_loss(kind, close.bfloat16(), target.bfloat16()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "compress"}, "task.mode='compress'.*reconstruct, denoise"),
        ({"loss": "huber"}, "task.loss='huber'.*mse, l1, bce, ssim"),
        ({"mode": "denoise", "noise": "speckle"}, "task.noise='speckle'.*gaussian, salt_pepper, masking"),
        ({"mode": "denoise", "noise": "masking", "noise_level": 1.5}, "task.noise_level=1.5.*at most 1"),
        ({"run_config": {"optimized_metric": "val/psnr_gain"}}, "logged in task.mode=denoise only"),
    ],
)
def test_bad_options_name_the_key_and_the_choices(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoencoderTask(LinearAutoencoder(1, 8), ADAM, **options)


def test_a_network_of_class_scores_is_refused_naming_the_autoencoders(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="Models for task=autoencoder: autoencoder_conv, autoencoder_linear"
    ):
        run(tmp_path, "task=autoencoder", "model=simple_cnn", "debug=fdr")


def test_images_stay_in_the_unit_range_for_every_dataset() -> None:
    spec = AutoencoderTask.samples
    assert spec == SampleSpec(needs=(), wants=("label",), normalize=False, collate=spec.collate)
    datamodule = DigitsDataModule(image_size=16, seed=0, spec=spec)
    datamodule.setup()
    images, targets = next(iter(datamodule.train_dataloader()))
    assert images.min() >= 0 and images.max() <= 1 and targets["label"].shape == (len(images),)


def test_codes_are_projected_on_their_main_directions() -> None:
    g = torch.Generator().manual_seed(0)
    # codes spread along two directions of a 6-D space, plus a little noise
    along = torch.randn(200, 2, generator=g) * torch.tensor([5.0, 2.0])
    basis = torch.linalg.qr(torch.randn(6, 2, generator=g)).Q.T
    codes = along @ basis + 0.01 * torch.randn(200, 6, generator=g)
    points = project_2d(codes)
    assert points.shape == (200, 2)
    assert points[:, 0].std() == pytest.approx(5.0, rel=0.15) and points[:, 1].std() == pytest.approx(
        2.0, rel=0.15
    )
    assert project_2d(codes[:, :1]).shape == (200, 2)  # a one-number code is drawn on a line
