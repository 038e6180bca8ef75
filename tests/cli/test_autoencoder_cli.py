"""The command lines of the autoencoder tasks, run as a user runs them: train.py, export, predict on a
folder of images, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tasks.test_autoencoder import write_digits

from cnnlab.data.io import read_image
from cnnlab.serving import runtime

from .test_cli import PREDICT, QUIET, ROOT, run


def test_predict_sorts_a_folder_by_score_and_flags_the_anomalies(anomaly_run: Path, tmp_path: Path) -> None:
    images = write_digits(tmp_path / "digits", {0: 3, 4: 2, 7: 2})
    proc = run(
        "-c",
        PREDICT,
        str(anomaly_run / "export" / "model.pt"),
        *map(str, images),
        "--out",
        str(tmp_path / "maps"),
    )
    lines = [line for line in proc.stdout.splitlines() if ": score " in line]
    assert len(lines) == 7 and "loaded: []" in proc.stdout
    scores = [float(line.split(": score ")[1].split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    # the zeros, the only normal class, score lowest
    assert all(Path(line.split(":")[0]).name.startswith("0_") for line in lines[-3:])
    threshold_line = next(line for line in proc.stdout.splitlines() if line.startswith("threshold "))
    threshold = float(threshold_line.split()[1])
    for line, score in zip(lines, scores, strict=True):
        assert ("ANOMALOUS" in line) == (score >= threshold)
    metrics = json.loads((anomaly_run / "metrics.json").read_text())
    assert (
        threshold == pytest.approx(metrics["test/threshold"], abs=1e-6)
        and "chosen on validation" in threshold_line
    )
    maps = sorted((tmp_path / "maps").glob("*.png"))
    assert len(maps) == 7 and Image.open(maps[0]).size == (16, 16)  # the model's image size
    # each map is the root of the squared error on one scale, 0 black and 1 white, not stretched per image
    model = runtime.load(anomaly_run / "export" / "model.pt")
    for path in images[:1] + images[-1:]:
        (error,) = model(runtime.as_batch(read_image(path, 1), 1))["maps"]
        with Image.open(tmp_path / "maps" / f"{path.stem}.png") as picture:
            pixels = np.asarray(picture)
        assert picture.mode == "L" and pixels.max() < 255
        np.testing.assert_allclose(pixels, (error.clamp(0, 1).sqrt() * 255).numpy(), atol=1.0)


def test_predict_with_a_threshold_of_ones_own(
    anomaly_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlab.predict import main as predict

    images = write_digits(tmp_path / "digits", {0: 1, 7: 1})
    with pytest.raises(SystemExit) as exit_code:
        predict([str(anomaly_run / "export"), *map(str, images), "--threshold", "0"])
    out = capsys.readouterr().out
    assert exit_code.value.code == 0
    assert out.count("ANOMALOUS") == 2 and "threshold 0.000000 (given): 2 of 2" in out


@pytest.mark.slow
def test_export_cli_carries_the_threshold(anomaly_run: Path, tmp_path: Path) -> None:
    ckpt = anomaly_run / "checkpoints" / "best.ckpt"
    proc = run("-m", "cnnlab.export", str(ckpt), "--out", str(tmp_path), "--formats", "torchscript")
    assert proc.stdout.startswith("torchscript ") and f"exported to {tmp_path}" in proc.stdout
    contract = json.loads((tmp_path / "model.json").read_text())
    metrics = json.loads((anomaly_run / "metrics.json").read_text())
    assert contract["task"] == "anomaly" and contract["threshold"] == pytest.approx(metrics["test/threshold"])
    assert (
        contract["outputs"] == ["scores", "maps", "anomalous"]
        and "threshold" in contract["output"]["anomalous"]
    )
    # the file carries it too, and decides by it
    model = runtime.load(tmp_path / "model.pt")
    assert model.contract["threshold"] == contract["threshold"]
    outputs = model(torch.rand(3, 1, 16, 16))
    assert torch.equal(outputs["anomalous"], outputs["scores"] >= contract["threshold"])


@pytest.mark.slow
def test_resume_of_a_denoising_anomaly_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    # denoising draws noise every training batch: the resumed run must draw what the straight one did
    common = ["experiment=ae_anomaly_digits", "task.mode=denoise", "trainer.max_epochs=3", *QUIET]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run(str(ROOT / "train.py"), *common, f"hydra.run.dir={straight}", "export=null")
    run(str(ROOT / "train.py"), *common, "trainer.max_steps=6", f"hydra.run.dir={interrupted}", "export=null")
    first = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 1 and first["global_step"] == 6  # two epochs of three batches
    run(str(ROOT / "train.py"), f"resume={interrupted}", "trainer.max_steps=-1")
    done = [torch.load(p / "checkpoints" / "last.ckpt", weights_only=True) for p in (straight, interrupted)]
    assert done[0]["global_step"] == done[1]["global_step"] == 9
    for key, value in done[0]["state_dict"].items():
        torch.testing.assert_close(done[1]["state_dict"][key], value, msg=key)
    thresholds = [ckpt["cnnlab"]["contract"]["threshold"] for ckpt in done]
    assert thresholds[0] == pytest.approx(thresholds[1])
    records = [json.loads((p / "metrics.json").read_text()) for p in (straight, interrupted)]
    assert records[0]["test/auroc"] == pytest.approx(records[1]["test/auroc"])
