"""What happens when a run meets a mistake: a clear message alone on the console, nothing wrong saved.

Each test writes the bad value or file in the real format and runs the command a user runs; the README's table
"What happens when ..." has a row per test here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import write_image_folder
from PIL import Image

from cli.test_cli import QUIET, ROOT, run, write_digit_png

TRAIN = str(ROOT / "train.py")
FAST = [*QUIET, "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"]


def assert_clean(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with cnnlab's message, and no traceback or config tree on the console."""
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0, console[-2000:]
    assert "Traceback" not in console and "_target_" not in console, console[-3000:]
    for word in words:
        assert word in console, (word, console[-3000:])
    return console


def assert_diverged(out: Path) -> None:
    """A diverged run's folder: failed with what to change, nothing exported, no non-finite checkpoint."""
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed"
    assert "became nan" in status["error"] and "optimizer.lr" in status["error"]
    assert not (out / "export").exists()
    for ckpt in (out / "checkpoints").glob("*.ckpt") if (out / "checkpoints").is_dir() else []:
        weights = torch.load(ckpt, weights_only=True)["state_dict"].values()
        assert all(torch.isfinite(w).all() for w in weights if w.is_floating_point())


def test_a_diverging_run_in_process_stops_before_anything_non_finite_is_kept(make_cfg) -> None:
    from cnnlab.tasks.base import NonFiniteLossError
    from cnnlab.train import run_task

    cfg = make_cfg("optimizer.lr=1e6", "trainer.max_epochs=2", "logger=none")
    said = r"training loss became nan at step \d+.*last finite loss was"
    with pytest.raises(NonFiniteLossError, match=said):
        run_task(cfg)
    out = Path(cfg.paths.output_dir)
    assert_diverged(out)


@pytest.mark.slow  # the command line's paragraph of the in-process test above
def test_a_diverging_run_stops_saves_nothing_wrong_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run(TRAIN, "optimizer.lr=1e6", "trainer.max_epochs=2", f"hydra.run.dir={out}", *QUIET, check=False)
    assert_clean(proc, "training loss became nan at step", "the last finite loss was", "optimizer.lr")
    assert_diverged(out)


@pytest.mark.slow
def test_resume_latest_refuses_an_older_run_when_the_newest_cannot_resume(tmp_path: Path) -> None:
    runs = tmp_path / "train" / "runs"
    (runs / "2026-01-01_10-00-00" / "checkpoints").mkdir(parents=True)
    (runs / "2026-01-01_10-00-00" / "checkpoints" / "last.ckpt").write_bytes(b"older run")
    (runs / "2026-01-02_10-00-00").mkdir()
    proc = run(TRAIN, "resume=latest", f"paths.output_root={tmp_path}", check=False)
    assert_clean(proc, "the newest run", "2026-01-02_10-00-00", "resume=", "2026-01-01_10-00-00")


def test_config_typos_are_refused_before_any_data_is_read(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.data.digits import DigitsDataModule
    from cnnlab.errors import ConfigError
    from cnnlab.train import train

    monkeypatch.setattr(DigitsDataModule, "load_split", lambda *a: pytest.fail("data was read"))
    typos = {
        "trainer.max_epochs=abc": "trainer.max_epochs=abc: give a whole number of epochs",
        "data.batch_size=0": "data.batch_size=0: give a whole number of images per batch",
        "data.batch_size=-1": "data.batch_size=-1",
        "seed=-1": "seed=-1: give a whole number >= 0",
        "optimized_metric=val/accuracy": "optimized_metric=val/accuracy is not a metric",
        "optimizer.lr=-0.1": "optimizer.lr=-0.1: give a learning rate > 0",
        "data.val_fraction=1.5": "data.val_fraction=1.5: give a fraction strictly between 0 and 1",
        "trainer.precision=15": "trainer.precision=15: give one of",
        "trainer.gradient_clip_val=-1": "trainer.gradient_clip_val=-1: give a gradient norm > 0, or null",
        "data.image_size=big": "data.image_size=big: give a size in pixels",
    }
    for typo, says in typos.items():
        with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace("+", r"\+")):
            train(make_cfg(typo))


@pytest.mark.slow  # a twin runs in make test (in-process or another command line)
def test_a_config_typo_on_the_command_line_is_one_paragraph(tmp_path: Path) -> None:
    started = time.perf_counter()
    # a metric the task does not log: its direction is resolved in the config tree, which the run logs first
    proc = run(TRAIN, "optimized_metric=val/accuracy", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert_clean(proc, "optimized_metric=val/accuracy is not a metric that task=classification logs")
    assert time.perf_counter() - started < 60
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "run" / "tensorboard").exists()  # nothing logged: no empty run in TensorBoard


@pytest.mark.slow
def test_an_offline_dataset_is_one_message_naming_the_files(tmp_path: Path) -> None:
    proc = run(
        TRAIN,
        "data=mnist",
        "data.download=false",
        f"paths.data_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'r'}",
        check=False,
    )
    console = assert_clean(proc, "MNIST is not in", "train-images-idx3-ubyte", "data.download=true")
    assert console.count("cnnlab:") == 1


@pytest.mark.slow  # a run of its own, stopped by a signal: timing-dependent on a loaded machine
def test_ctrl_c_marks_the_run_interrupted_with_the_command_that_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    # the child gets SIGINT's default action, as a terminal's foreground process has: exec resets a caught
    # signal to it, but an ignored one (which a test process may hold) would be inherited, and Python then
    # raises no KeyboardInterrupt
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, TRAIN, "trainer.max_epochs=50", f"hydra.run.dir={out}", *QUIET],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # the console's tail says where a signal that did not stop the run went
    assert proc.returncode == 130 and "Traceback" not in err, f"(SIGINT here: {inherited})\n{err[-3000:]}"
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and f"python train.py resume={out}" in status["reason"]


@pytest.mark.slow
def test_a_run_folder_with_a_comma_resumes(tmp_path: Path) -> None:
    out = tmp_path / "lr 0.1, seed 3"
    run(TRAIN, *FAST, f"hydra.run.dir='{out}'", "export=null")
    run(TRAIN, f"resume={out}", "trainer.max_epochs=2", "export=null")
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


@pytest.mark.slow  # a sweep of train.py jobs
def test_a_failed_job_of_a_sweep_says_so_as_it_fails(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run(
        TRAIN, "-m", "optimizer.lr=1e6,1e-3", *FAST, f"hydra.sweep.dir={sweep}", "export=null", check=False
    )
    assert "[cnnlab] job 0 failed: the weights became nan" in proc.stderr
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "failed"
    assert json.loads((sweep / "1" / "status.json").read_text())["status"] == "completed"
    assert "python train.py optimizer.lr=1000000.0" in (sweep / "results.md").read_text()


@pytest.mark.slow  # the epoch line itself: tests/training/test_epoch_log.py
def test_a_piped_run_logs_a_line_per_epoch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run(
        TRAIN, *QUIET[1:], "trainer.max_epochs=2", "trainer.limit_train_batches=3", f"hydra.run.dir={out}"
    )
    log = (out / "train.log").read_text()
    for epoch in (1, 2):
        assert f"epoch {epoch}/2  val/acc" in log and f"epoch {epoch}/2" in proc.stdout + proc.stderr


#: runs predict once per argument list (JSON in argv[1]) in one interpreter, as separate commands would run,
#: closing each one's console output with its exit code; an exception would end it with a traceback
PREDICT_EACH = (
    "import json, sys; from cnnlab.predict import main\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    try:\n        main(argv)\n"
    "    except SystemExit as done:\n"
    "        print(f'exit {done.code}', file=sys.stderr, flush=True)\n"
)


def predict_each(*commands: list[str]) -> list[str]:
    """The console output (stderr) of each predict command, each checked to end with exit code 2."""
    proc = run("-c", PREDICT_EACH, json.dumps([[str(a) for a in argv] for argv in commands]), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = proc.stderr.split("exit 2\n")
    assert len(outputs) == len(commands) + 1 and not outputs[-1].strip(), proc.stderr[-3000:]
    return outputs[:-1]


def write_small_export(folder: Path, task: str) -> Path:
    """An untrained model of ``task`` (a detector or an anomaly detector) exported to TorchScript as cnnlab
    exports it."""
    from cnnlab.models.autoencoders import LinearAutoencoder
    from cnnlab.models.detectors import SSDLite
    from cnnlab.serving import anomaly, detection, formats

    contract = {
        "in_channels": 3,
        "image_size": 32,
        "resize_size": 32,
        "geometry": "none",
        "mean": [],
        "std": [],
    }
    if task == "detection":
        contract.update(class_names=["a", "b"], score_threshold=0.5)
        net, serving = SSDLite(num_classes=2, image_size=32, backbone="mobilenet_v3_small"), detection
    else:
        contract.update(class_names=["good"], threshold=0.01, score="mean")
        net, serving = LinearAutoencoder(3, 32, hidden=(8,), bottleneck=2), anomaly
    contract.update(task=task, serving=serving.__name__)
    module = serving.wrap(net.eval(), contract).eval()
    contract["outputs"] = list(module.outputs)
    path = folder / f"{task}.pt"
    formats.write("torchscript", module, torch.rand(1, 3, 32, 32), path, contract, dynamic=True)
    return path


@pytest.fixture
def exported(cli_run: Path) -> Path:
    """A train.py run exported in every format: the shared run of tests/conftest.py,
    read, never written."""
    return cli_run


def test_predict_explains_files_that_are_no_exported_model(exported: Path, tmp_path: Path) -> None:
    image = write_digit_png(tmp_path / "digit.png")
    commands = [[exported / "checkpoints" / "last.ckpt", image]]
    for name in ("model.pt2", "model.onnx", "model.pt"):
        (tmp_path / "cut").mkdir(exist_ok=True)
        (tmp_path / "cut" / name).write_bytes((exported / "export" / name).read_bytes()[:5000])
        commands.append([tmp_path / "cut" / name, image])
    torch.jit.script(torch.nn.Identity()).save(str(tmp_path / "x.pt"))  # TorchScript of another tool's
    commands.append([tmp_path / "x.pt", image])
    said = predict_each(*commands)
    expected = [
        ["is a training checkpoint, not an exported model", "python -m cnnlab.export"],
        ["model.pt2 is not an exported model: it is truncated"],
        ["model.onnx is not an exported model: it is truncated"],
        ["model.pt is not an exported model: it is truncated"],
        ["was not exported by this version of cnnlab"],
    ]
    for console, words in zip(said, expected, strict=True):
        assert console.count("cnnlab-predict: ") == 1 and console.startswith("cnnlab-predict: "), console
        assert "Traceback" not in console and console.count("\n") == 1, console  # one line
        assert all(word in console for word in words), (words, console)
        assert "model.pt2, model.onnx or model.pt" in console or "cnnlab.export" in console  # what it takes


def test_predict_refuses_thresholds_no_score_can_meet_and_folders_without_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlab.predict import main as predict

    image = write_digit_png(tmp_path / "digit.png")
    detector = write_small_export(tmp_path, "detection")
    anomalies = write_small_export(tmp_path, "anomaly")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    cases = {
        (detector, image, "--threshold", "2.0"): "--threshold 2.0: detection scores lie in [0, 1]",
        (detector, image, "--threshold", "-0.1"): "--threshold -0.1: detection scores lie in [0, 1]",
        (anomalies, image, "--threshold", "-0.1"): "--threshold -0.1: anomaly scores are squared errors",
        (anomalies, tmp_path / "empty"): f"no images found in {tmp_path / 'empty'} (looked for .bmp",
    }
    for argv, words in cases.items():
        with pytest.raises(SystemExit) as exit_code:
            predict([str(a) for a in argv])
        console = capsys.readouterr()
        assert exit_code.value.code == 2 and not console.out, argv
        assert console.err.startswith("cnnlab-predict: ") and console.err.count("\n") == 1, console.err
        assert words in console.err, (words, console.err)
    assert not (tmp_path / "predictions").exists()  # refused before any image was read or written


def test_predict_reads_sixteen_bit_images_as_training_does(exported: Path, tmp_path: Path) -> None:
    from cnnlab.data.io import read_image
    from cnnlab.serving import runtime

    eight = write_digit_png(tmp_path / "eight.png")
    pixels = np.asarray(Image.open(eight).convert("L")).astype(np.uint16) * 257  # the same picture in 16 bits
    Image.fromarray(pixels).save(tmp_path / "sixteen.png")
    sixteen = read_image(tmp_path / "sixteen.png", 1)
    assert sixteen.dtype == torch.uint16
    for name in ("model.pt2", "model.onnx", "model.pt"):
        model = runtime.load(exported / "export" / name)
        (from_8,), (from_16,) = (
            runtime.predict(model, [image], top_k=10) for image in (read_image(eight, 1), sixteen)
        )
        probabilities = {c["class"]: c["probability"] for c in from_8["top"]}
        assert all(abs(probabilities[c["class"]] - c["probability"]) < 1e-4 for c in from_16["top"]), name


def test_truncated_or_foreign_checkpoints_are_explained(exported: Path, tmp_path: Path) -> None:
    from cnnlab.errors import CheckpointError
    from cnnlab.export import export_checkpoint
    from cnnlab.models.simple_cnn import SimpleCNN

    truncated = tmp_path / "half.ckpt"
    truncated.write_bytes((exported / "checkpoints" / "last.ckpt").read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="truncated"):
        export_checkpoint(truncated, tmp_path / "out")
    with pytest.raises(CheckpointError, match="truncated"):
        SimpleCNN(num_classes=3, in_channels=1, image_size=16, weights=str(truncated))
    pickled = tmp_path / "code.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/")}, pickled)  # an object, where a plain value belongs
    with pytest.raises(CheckpointError, match="does not load this one") as caught:
        export_checkpoint(pickled, tmp_path / "out")
    assert "weights_only=False" not in str(caught.value)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of a cnnlab run"):
        export_checkpoint(foreign, tmp_path / "out")


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from cnnlab.checkpoint_io import AtomicCheckpointIO
    from cnnlab.errors import CheckpointError

    target = tmp_path / "checkpoints" / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"epoch": 1}, target)

    def disk_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"half a checkpoint")  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        CheckpointError, match="No space left on device.*previous last.ckpt is unchanged.*resume="
    ):
        writer.save_checkpoint({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_evaluating_on_other_classes_is_refused_naming_both(tmp_path: Path, make_cfg) -> None:
    from omegaconf import open_dict

    from cnnlab.errors import ConfigError
    from cnnlab.evaluate import evaluate
    from cnnlab.train import train

    pets = write_image_folder(tmp_path / "pets", ["cat", "dog"], n_per_class=6)
    fruit = write_image_folder(tmp_path / "fruit", ["apple", "pear"], n_per_class=3)
    cfg = make_cfg(
        "data=image_folder", f"data.root={pets}", "data.image_size=16", "data.num_workers=0", *FAST[3:]
    )
    with open_dict(cfg):
        cfg.callbacks = {"checkpoint": cfg.callbacks.checkpoint}
    record = train(cfg)
    eval_cfg = make_cfg(f"ckpt_path={record['best_checkpoint']}", f"+data.root={fruit}", config_name="eval")
    with pytest.raises(ConfigError, match=r"classes are \['apple', 'pear'\].*trained on \['cat', 'dog'\]"):
        evaluate(eval_cfg)
    three = write_image_folder(tmp_path / "three", ["cat", "dog", "fox"], n_per_class=3)
    eval_cfg = make_cfg(f"ckpt_path={record['best_checkpoint']}", f"+data.root={three}", config_name="eval")
    with pytest.raises(ConfigError, match=r"\['cat', 'dog', 'fox'\].*trained on \['cat', 'dog'\]"):
        evaluate(eval_cfg)


def test_eval_takes_data_keys_as_written_in_the_readme() -> None:
    from cnnlab.evaluate import data_overrides

    assert data_overrides(["ckpt_path=x.ckpt", "data.root=/photos", "trainer.accelerator=cpu"]) == [
        "ckpt_path=x.ckpt",
        "++data.root=/photos",
        "trainer.accelerator=cpu",
    ]
    assert data_overrides(["+data=coco", "data.root=/coco"]) == ["data=coco", "++data.root=/coco"]
    with pytest.raises(
        SystemExit, match=r"data._target_=x.Reader: choose another dataset with data=NAME.*coco"
    ):
        data_overrides(["data._target_=x.Reader"])
