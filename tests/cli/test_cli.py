"""The command lines, run as a user runs them: train.py (single, multirun, DDP), predict, export, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from cnnlab.checkpoints import load_task, read_checkpoint
from cnnlab.data.digits import DigitsDataModule
from cnnlab.data.io import read_image
from cnnlab.data.transforms import eval_transform

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "trainer.accelerator=cpu"]
#: runs predict as the console script does (its arguments after the code), then says whether training code
#: was imported
PREDICT = (
    "import sys; from cnnlab.predict import main; sys.argv = ['cnnlab-predict', *sys.argv[1:]]\n"
    "try:\n    main()\n"
    "finally:\n"
    "    print('loaded:', sorted(m for m in ('lightning', 'hydra', 'cnnlab.train') if m in sys.modules))"
)
FORMAT_FILES = ["model.pt2", "model.onnx", "model.pt"]


def run(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this interpreter; fail with its output when it fails unexpectedly."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_train_cli_writes_a_run_folder(cli_run: Path) -> None:
    assert (cli_run / ".hydra" / "config.yaml").is_file() and (
        cli_run / ".hydra" / "overrides.yaml"
    ).is_file()
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and 0 < metrics["test/acc"] <= 1
    assert metrics["export"] == str(cli_run / "export")
    assert metrics["export_files"] == dict(zip(("pt2", "onnx", "torchscript"), FORMAT_FILES, strict=True))
    assert all((cli_run / "export" / name).is_file() for name in FORMAT_FILES)


def write_digit_png(path: Path, size: tuple[int, int] = (24, 30), index: int = 0) -> Path:
    """A real digit from the embedded set, saved as an RGB PNG of another size."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    picture = Image.fromarray((digits.images[index] * 255 / 16).astype("uint8"))
    picture.resize(size).convert("RGB").save(path)
    return path


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Twenty digits of the embedded set, as RGB PNGs of another size than the training images."""
    folder = tmp_path_factory.mktemp("digits")
    return [write_digit_png(folder / f"digit_{n:02d}.png", index=-1 - n) for n in range(20)]


@pytest.fixture(scope="module")
def checkpoint_top1(cli_run: Path, digit_files: list[Path]) -> list[str]:
    """The checkpoint's top class of each digit file, through evaluation's transform."""
    task = load_task(cli_run / "checkpoints" / "best.ckpt").eval()
    c = task.contract
    transform = eval_transform(c["image_size"], c["resize_size"], c["mean"], c["std"], c["geometry"])
    batch = torch.stack([transform(tv_tensors.Image(read_image(path, 1))) for path in digit_files])
    with torch.no_grad():
        return [c["class_names"][i] for i in task(batch.as_subclass(torch.Tensor)).argmax(1).tolist()]


@pytest.mark.slow
def test_eval_reads_another_dataset_of_the_checkpoints_classes_as_it_was_trained(
    cli_run: Path, tmp_path: Path
) -> None:
    """A digits checkpoint tested on the same kind of digits stored as a photo folder (data=image_folder)."""
    from sklearn.datasets import load_digits

    labels = load_digits().target
    picked = {k: [i for i in range(len(labels) - 1, -1, -1) if labels[i] == k][:2] for k in range(10)}
    files = []
    for k, indices in picked.items():
        for split in ("train", "test"):
            (tmp_path / "photos" / split / str(k)).mkdir(parents=True)
        write_digit_png(tmp_path / "photos" / "train" / str(k) / "0.png", index=indices[0])
        files += [
            (write_digit_png(tmp_path / "photos" / "test" / str(k) / f"{i}.png", index=i), k) for i in indices
        ]
    out = tmp_path / "eval"
    proc = run(
        "-m",
        "cnnlab.evaluate",
        f"ckpt_path={cli_run / 'checkpoints' / 'best.ckpt'}",
        "data=image_folder",
        f"data.root={tmp_path / 'photos'}",
        "data.num_workers=0",
        f"hydra.run.dir={out}",
        "trainer.accelerator=cpu",
    )
    assert "read as the checkpoint was trained: image_size=16" in proc.stdout + proc.stderr
    task = load_task(cli_run / "checkpoints" / "best.ckpt").eval()
    c = task.contract
    transform = eval_transform(c["image_size"], c["resize_size"], c["mean"], c["std"], c["geometry"])
    batch = torch.stack([transform(tv_tensors.Image(read_image(path, 1))) for path, _ in files])
    with torch.no_grad():
        predicted = task(batch.as_subclass(torch.Tensor)).argmax(1)
    expected = (predicted == torch.tensor([k for _, k in files])).float().mean().item()
    assert json.loads((out / "metrics.json").read_text())["test/acc"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_eval_refuses_a_dataset_the_checkpoints_task_cannot_use(cli_run: Path, tmp_path: Path) -> None:
    ckpt = f"ckpt_path={cli_run / 'checkpoints' / 'best.ckpt'}"
    proc = run("-m", "cnnlab.evaluate", ckpt, "+data=shapes", f"hydra.run.dir={tmp_path}", check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in console, console[-2000:]
    assert "task=classification needs a class label per image, which data=shapes does not have" in console
    assert "Datasets for task=classification:" in console and "image_folder" in console


# one format in the fast suite, every format in test-all: each is a process that starts torch
@pytest.mark.parametrize(
    "name", [n if n == "model.onnx" else pytest.param(n, marks=pytest.mark.slow) for n in FORMAT_FILES]
)
def test_predict_cli_gives_the_checkpoints_classes_from_every_format_without_the_training_code(
    cli_run: Path, digit_files: list[Path], checkpoint_top1: list[str], name: str
) -> None:
    proc = run("-c", PREDICT, str(cli_run / "export" / name), *map(str, digit_files), "--top-k", "3")
    lines = dict(
        line.split(": ", 1)
        for line in proc.stdout.splitlines()
        if line.startswith(str(digit_files[0].parent))
    )
    assert list(lines) == [str(path) for path in digit_files]
    top1 = []
    for line in lines.values():
        ranked = [part.rsplit(" ", 1) for part in line.split(", ")]
        assert len(ranked) == 3 and all(label in [str(i) for i in range(10)] for label, _ in ranked)
        probs = [float(p) for _, p in ranked]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        top1.append(ranked[0][0])
    assert top1 == checkpoint_top1
    assert "loaded: []" in proc.stdout


def test_predict_cli_prints_the_records_as_json(
    cli_run: Path, digit_files: list[Path], checkpoint_top1: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlab.predict import main as predict

    with pytest.raises(SystemExit) as exit_code:
        predict([str(cli_run / "export"), *map(str, digit_files[:4]), "--json", "--top-k", "2"])
    assert exit_code.value.code == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == [str(path) for path in digit_files[:4]]
    assert all(r["task"] == "classification" and len(r["top"]) == 2 for r in records)
    assert [r["top"][0]["class"] for r in records] == checkpoint_top1[:4]
    assert all(r["top"][0]["probability"] >= r["top"][1]["probability"] for r in records)


def test_predict_cli_writes_each_picture_into_the_folder_asked(
    cli_run: Path, digit_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlab.predict import main as predict

    with pytest.raises(SystemExit) as exit_code:
        predict([str(cli_run / "export" / "model.pt"), str(digit_files[0]), "--out", str(tmp_path)])
    assert exit_code.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" -> {tmp_path / 'digit_00.png'}")
    # simple_cnn's default head has a hidden layer, so no activation map: the image as the model read it
    written = np.asarray(Image.open(tmp_path / "digit_00.png"))
    grey = read_image(digit_files[0], 1)[0].numpy()
    assert written.shape == (30, 24, 3) and all(np.array_equal(written[..., c], grey) for c in range(3))


@pytest.mark.slow  # a twin runs in make test (in-process or another command line)
def test_predict_cli_reports_a_file_that_is_no_image(cli_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    proc = run("-m", "cnnlab.predict", str(cli_run / "export" / "model.pt"), str(bad), check=False)
    assert proc.returncode == 1 and "not an image" in proc.stderr


@pytest.mark.slow
def test_export_cli_writes_every_format_and_the_contract(cli_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    proc = run("-m", "cnnlab.export", str(cli_run / "checkpoints" / "best.ckpt"), "--out", str(out))
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [
        ["pt2", "model.pt2"],
        ["onnx", "model.onnx"],
        ["torchscript", "model.pt"],
    ]
    assert all("max diff: probabilities" in line for line in lines[:3])
    assert lines[3].startswith(f"exported to {out} ")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "model.pt", "model.pt2"]
    described = json.loads((out / "model.json").read_text())
    assert described["image_size"] == 16 and list(described["formats"]) == ["pt2", "onnx", "torchscript"]
    assert all(info["max_abs_diff"]["probabilities"] < 1e-4 for info in described["formats"].values())


@pytest.mark.slow  # a twin runs in make test (in-process or another command line)
def test_export_cli_writes_only_the_formats_asked(
    cli_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlab.export import main as export

    export([str(cli_run / "checkpoints" / "best.ckpt"), "--out", str(tmp_path), "--formats", "onnx"])
    assert capsys.readouterr().out.splitlines()[0].split()[:2] == ["onnx", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.onnx"]
    assert list(json.loads((tmp_path / "model.json").read_text())["formats"]) == ["onnx"]


def test_export_cli_refuses_an_unknown_format_and_a_missing_checkpoint(
    cli_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlab.export import main as export

    ckpt = str(cli_run / "checkpoints" / "best.ckpt")
    for argv, words in (
        (
            [ckpt, "--out", str(tmp_path), "--formats", "onnx,h5"],
            "choose one or more of pt2, onnx, torchscript",
        ),
        ([str(tmp_path / "none.ckpt")], "does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_code:
            export(argv)
        assert exit_code.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("cnnlab-export: ") and words in error and error.count("\n") == 1
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_multirun_runs_each_job_in_its_own_folder(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run(str(ROOT / "train.py"), "-m", "model=mlp,simple_cnn", "debug=fdr", f"hydra.sweep.dir={sweep}", *QUIET)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    models = [(p / ".hydra" / "overrides.yaml").read_text() for p in jobs]
    assert "model=mlp" in models[0] and "model=simple_cnn" in models[1]
    assert all((p / "metrics.json").is_file() for p in jobs)
    assert all(json.loads((p / "status.json").read_text())["status"] == "completed" for p in jobs)
    rows = (sweep / "results.csv").read_text().splitlines()
    assert rows[0].startswith("job,status,overrides,best/val/acc,test/acc") and len(rows) == 3
    assert "## Mean +/- std over seeds" in (sweep / "results.md").read_text()


@pytest.mark.slow
def test_freeze_depth_sweep_runs_every_depth(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "finetune=partial", "finetune.freeze=0,1,2,3,all", "debug=fdr", f"hydra.sweep.dir={sweep}"]
    run(str(ROOT / "train.py"), *args, *QUIET)
    rows = (sweep / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == 5 and all(",completed," in row for row in rows)
    # each job froze what it was asked to (simple_cnn has three stages)
    logs = [(sweep / str(job) / "train.log").read_text() for job in range(5)]
    for log, frozen in zip(logs, [0, 1, 2, 3, 3], strict=True):
        assert f"{frozen} of 3 stages frozen at epoch 0" in log


@pytest.mark.slow
def test_ddp_sim_trains_with_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    limits = ["trainer.max_epochs=1", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    proc = run(str(ROOT / "train.py"), "trainer=ddp_sim", *limits, f"hydra.run.dir={out}", *QUIET)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["test/acc"] > 0
    # every value is the same in both processes (torchmetrics' synchronised, or reduced): no warning that
    # one might not be
    assert "sync_dist=True" not in proc.stdout + proc.stderr
    # each of the two processes trains on its half of the training split: half the steps of one process
    datamodule = DigitsDataModule(image_size=16, batch_size=64, seed=42)
    datamodule.setup("fit")
    steps_alone = len(datamodule.train_set) // 64
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == steps_alone // 2
    # only rank 0 writes the run folder: one config, one metrics file, no second run folder
    assert not (out / ".hydra" / "train_ddp_process_1.log").exists()
    assert (out / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_resume_continues_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    common = ["model=simple_cnn", "model.dropout=0.1", "trainer.max_epochs=3", "scheduler=cosine", *QUIET]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run(str(ROOT / "train.py"), *common, f"hydra.run.dir={straight}", "export=null")
    # the same run stopped after its second epoch, then reopened by folder
    run(
        str(ROOT / "train.py"), *common, "trainer.max_steps=40", f"hydra.run.dir={interrupted}", "export=null"
    )
    first = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 1 and first["global_step"] == 40
    run(str(ROOT / "train.py"), f"resume={interrupted}", "trainer.max_steps=-1")
    done = [torch.load(p / "checkpoints" / "last.ckpt", weights_only=True) for p in (straight, interrupted)]
    assert done[0]["global_step"] == done[1]["global_step"] == 60
    for key, value in done[0]["state_dict"].items():
        torch.testing.assert_close(done[1]["state_dict"][key], value, msg=key)
    events = list((interrupted / "tensorboard").glob("events.*"))
    assert len(events) >= 2  # the same TensorBoard folder, continued


@pytest.mark.slow
def test_resume_of_a_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    proc = run(str(ROOT / "train.py"), f"resume={tmp_path / 'nothing'}", check=False)
    assert proc.returncode != 0 and "last.ckpt does not exist" in proc.stderr


@pytest.mark.slow
def test_gradual_unfreezing_runs_under_ddp_sim(tmp_path: Path) -> None:
    out = tmp_path / "ddp_gradual"
    run(
        str(ROOT / "train.py"),
        "trainer=ddp_sim",
        "model=resnet",
        "finetune=gradual",
        "finetune.unfreeze_every=1",
        "debug=limit",
        "trainer.max_epochs=3",
        f"hydra.run.dir={out}",
        *QUIET,
    )
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2
    assert [g["name"] for g in ckpt["optimizer_states"][0]["param_groups"]][-1] == "head"


@pytest.mark.slow
def test_transfer_demo_writes_its_comparison(tmp_path: Path) -> None:
    demo = str(ROOT / "scripts" / "transfer_demo.py")
    args = ["--seeds", "1", "--finetune", "partial", "--freeze", "all", "--out", str(tmp_path)]
    proc = run(demo, *args, "trainer.max_epochs=2")
    summary = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("source/test/acc", "scratch/test/acc", "finetune/test/acc", "gain", "gain_std"):
        assert isinstance(summary[key], float), key
    assert summary["gain"] == pytest.approx(summary["finetune/test/acc"] - summary["scratch/test/acc"])
    assert summary["finetune_wins"] == int(summary["gain"] > 0) and summary["seeds"] == 1
    # the fine-tuning arm starts from the source run's last epoch
    assert summary["pretrained_checkpoint"] == str(tmp_path / "pretrain" / "checkpoints" / "last.ckpt")
    assert "fine-tuning wins" in proc.stdout and summary["overrides"] == ["trainer.max_epochs=2"]
    assert json.loads((tmp_path / "finetune_seed0" / "metrics.json").read_text())["epochs"] == 2
    # --freeze all reached the fine-tuning run: its stages are still the source's, tensor for tensor
    source = read_checkpoint(summary["pretrained_checkpoint"])["state_dict"]
    tuned = read_checkpoint(tmp_path / "finetune_seed0" / "checkpoints" / "last.ckpt")["state_dict"]
    stages = [k for k in source if k.startswith("net.stages.")]
    assert stages and all(torch.equal(tuned[k], source[k]) for k in stages)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--help"], "== Configuration groups =="),
        (["model=resnt"], "Could not find 'model/resnt'"),
        (["trainer.max_epoch=3"], "Could not override 'trainer.max_epoch'"),
    ],
)
def test_help_and_misspelt_options_are_answered_before_torch_is_imported(args: list[str], says: str) -> None:
    code = (
        "import sys\n"
        "from cnnlab import train\n"
        "try:\n"
        "    train.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('imported:', 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert says in done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "imported: False False"


def test_help_piped_into_a_reader_that_stops_early_ends_quietly() -> None:
    # `true` reads nothing and exits at once: every write of the help meets a closed pipe
    done = subprocess.run(
        f"{sys.executable} train.py --help | true", shell=True, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
