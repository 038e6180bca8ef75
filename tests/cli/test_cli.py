"""The command lines, run as a user runs them: train.py (single, multirun, DDP), predict, export, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab.checkpoints import read_checkpoint
from cnnlab.data.digits import DigitsDataModule

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "trainer.accelerator=cpu"]


def run(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this interpreter; fail with its output when it fails unexpectedly."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python train.py` for two epochs, through the real entry point."""
    out = tmp_path_factory.mktemp("cli") / "run"
    run(str(ROOT / "train.py"), "trainer.max_epochs=2", f"hydra.run.dir={out}", *QUIET)
    return out


def test_train_cli_writes_a_run_folder(cli_run: Path) -> None:
    assert (cli_run / ".hydra" / "config.yaml").is_file() and (
        cli_run / ".hydra" / "overrides.yaml"
    ).is_file()
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0 < metrics["test/acc"] <= 1
    assert Path(metrics["export"]).is_file()


def write_digit_png(path: Path, size: tuple[int, int] = (24, 30)) -> Path:
    """A real digit from the embedded set, saved as an RGB PNG of another size."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = Image.fromarray((digits.images[0] * 255 / 16).astype("uint8")).resize(size).convert("RGB")
    image.save(path)
    return path


def test_predict_cli_prints_top_k_without_the_training_code(cli_run: Path, tmp_path: Path) -> None:
    image = write_digit_png(tmp_path / "zero.png")
    code = (
        "import sys; from cnnlab.predict import main; "
        "sys.argv = ['cnnlab-predict', sys.argv[1], sys.argv[2], '--top-k', '3']\n"
        "try:\n    main()\n"
        "finally:\n"
        "    print('loaded:', sorted(m for m in ('lightning', 'hydra', 'cnnlab.train') if m in sys.modules))"
    )
    proc = run("-c", code, str(cli_run / "export" / "model.pt"), str(image))
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(str(image)))
    ranked = [part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", ")]
    assert len(ranked) == 3 and all(name in [str(i) for i in range(10)] for name, _ in ranked)
    probs = [float(p) for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert "loaded: []" in proc.stdout


def test_predict_cli_reports_a_file_that_is_no_image(cli_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    proc = run("-m", "cnnlab.predict", str(cli_run / "export" / "model.pt"), str(bad), check=False)
    assert proc.returncode == 1 and "not an image" in proc.stderr


def test_export_cli_writes_model_and_contract(cli_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    proc = run("-m", "cnnlab.export", str(cli_run / "checkpoints" / "best.ckpt"), "--out", str(out))
    assert "exported" in proc.stdout
    assert json.loads((out / "model.json").read_text())["image_size"] == 16
    missing = run("-m", "cnnlab.export", str(tmp_path / "none.ckpt"), check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


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


def test_ddp_inside_a_multirun_is_refused(tmp_path: Path) -> None:
    proc = run(
        str(ROOT / "train.py"),
        "-m",
        "trainer=ddp_sim",
        "debug=fdr",
        f"hydra.sweep.dir={tmp_path}",
        *QUIET,
        check=False,
    )
    assert proc.returncode != 0
    assert "cannot run inside a sweep" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_ddp_sim_trains_with_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    limits = ["trainer.max_epochs=1", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    run(str(ROOT / "train.py"), "trainer=ddp_sim", *limits, f"hydra.run.dir={out}", *QUIET)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["test/acc"] > 0
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
    run(str(ROOT / "train.py"), *common, f"hydra.run.dir={straight}")
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
