"""scripts/bench.py: its plain loop, its refusals, and one job alternated with a baseline checkout."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench")


def test_the_plain_loop_trains_the_configs_network(bench: ModuleType) -> None:
    data, _ = bench.digits_data()
    result = bench.plain_fit(bench.compose([]), data, epochs=1)
    assert result["train_images"] == 1294 and result["fit"] > 0
    assert result["test_acc"] > 0.5  # one epoch: far above the 0.1 of chance


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--jobs", "digits,mnist"], "unknown job(s) mnist: choose from digits, folder, photos"),
        (["--baseline", "/nonexistent"], "no train.py there"),
    ],
)
def test_bad_arguments_are_refused_with_the_choices(bench: ModuleType, args, says, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main(args)
    assert says in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_a_gpu_job_without_a_gpu_is_refused(bench: ModuleType, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda", "--jobs", "resnet18_224"])
    assert "no GPU is visible" in capsys.readouterr().err


@pytest.mark.slow
def test_a_job_alternates_plain_cnnlab_and_a_baseline_checkout(bench: ModuleType, tmp_path: Path) -> None:
    # this checkout as its own baseline: the path a before/after comparison takes
    bench.main(["--jobs", "digits", "--repeats", "1", "--out", str(tmp_path), "--baseline", str(ROOT)])
    results = json.loads((tmp_path / "results.json").read_text())["digits"]
    (plain,) = results["plain"]  # from a process of its own, as the runs are
    assert plain["test_acc"] > 0.9 and plain["fit"] > 0 and plain["train_images"] == 1294
    assert plain["faults"] > 10_000  # the process's own: importing torch alone takes tens of thousands
    for side in ("cnnlab", "baseline cnnlab"):
        (run,) = results[side]
        assert run["metrics"]["test/acc"] > 0.9
        assert all(not math.isnan(run["phases"][p]) for p in bench.PHASES)
        assert run["wall"] >= run["phases"]["fit"] > 0
        assert run["faults"] > 10_000
    table = (tmp_path / "results.md").read_text()
    assert "| cnnlab |" in table and "| baseline cnnlab |" in table
    assert f"{results['cnnlab'][0]['faults'] / 1000:,.0f}k |" in table


def test_the_decoded_cache_bench_reads_the_cache_it_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("bench_decoded_cache")
    args = ["--images", "6", "--size", "48", "40", "--image-size", "16", "--workers", "0", "--epochs", "1"]
    monkeypatch.setattr(sys, "argv", ["bench", *args, "--repeats", "1", "--folder", str(tmp_path)])
    script.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("decoded_cache=")]
    assert [line.split(":")[0] for line in lines] == ["decoded_cache=false", "decoded_cache=auto"]
    assert all("(4 images)" in line for line in lines)  # 6 photos: 1 for testing, 1 validating, 4 training
    assert len(list((tmp_path / "6_48x40").glob(".cnnlab_resized_16px_*.u8"))) == 1
    monkeypatch.setattr(sys, "argv", ["bench", "--images", "2"])
    with pytest.raises(SystemExit):
        script.main()
    assert "--images: at least 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("task", "what", "names"),
    [
        ("segmentation", "masks of 3 classes", ["torchmetrics", "torchmetrics unchecked", "PixelScores"]),
        ("anomaly", "error maps", ["torchmetrics", "BinnedAUROC"]),
    ],
)
def test_the_metrics_bench_times_each_side_on_the_same_values(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    task: str,
    what: str,
    names: list[str],
) -> None:
    script = load_script("bench_metrics")
    argv = ["bench", "--task", task, "--sizes", "8", "12", "--batch", "2", "--classes", "3", "--updates", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"2 {what} on cpu; the time of an update, best of 3 x 2"
    assert [line.split(":")[0] for line in lines[1:]] == ["8 px", "12 px"]
    for line in lines[1:]:
        assert line.endswith("same values: True")
        sides = [part.rsplit(" ", 2) for part in line.split(": ", 1)[1].split(";")[0].split(", ")]
        assert [name for name, _, _ in sides] == names
        assert all(float(ms) > 0 and unit == "ms" for _, ms, unit in sides)


def test_the_metrics_bench_refuses_what_it_cannot_time(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("bench_metrics")
    for argv, said in (
        (["--classes", "1"], "--classes: at least 2"),
        (["--updates", "0"], "--updates and --sizes: at least 1"),
        (["--task", "detection"], "invalid choice: 'detection'"),
    ):
        monkeypatch.setattr(sys, "argv", ["bench", *argv])
        with pytest.raises(SystemExit):
            script.main()
        assert said in capsys.readouterr().err


def test_the_sync_check_counts_synchronising_calls_by_call_site() -> None:
    script = load_script("sync_check")

    def warning(text: str, line: int) -> warnings.WarningMessage:
        return warnings.WarningMessage(UserWarning(text), UserWarning, "step.py", line)

    caught = [warning(f"{script.SYNC_WARNING}", 7), warning("other", 3), warning(f"{script.SYNC_WARNING}", 9)]
    caught.append(warning(f"{script.SYNC_WARNING}", 7))
    found = script.summarise("classification", caught, steps=4)
    assert found["syncs"] == 3 and found["per_step"] == 0.75
    assert found["sites"] == [("step.py:7", 2), ("step.py:9", 1)]


def test_the_sync_check_dry_run_trains_and_watches_each_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("sync_check")
    script.main(
        ["--device", "cpu", "--jobs", "classification", "--steps", "3", "--skip", "1", "--out", str(tmp_path)]
    )
    said = capsys.readouterr().out
    assert "sync check on the CPU (a dry run): 3 training steps a job after 1" in said
    assert "classification: 0 synchronising calls in 3 steps (0.00 a step)" in said
    (found,) = json.loads((tmp_path / "sync_check.json").read_text())
    assert found["job"] == "classification" and found["steps"] == 3


def test_the_sync_check_refuses_what_it_cannot_check(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("sync_check")
    for argv, said in (
        (["--jobs", "classification,tracking"], "--jobs tracking: choose from classification, segmentation"),
        (["--steps", "0"], "--steps: at least 1"),
        ([], "a CUDA GPU is needed (--device cpu: a dry run"),  # the tests hide any GPU
    ):
        with pytest.raises(SystemExit):
            script.main(argv)
        assert said in capsys.readouterr().err


def test_the_metrics_bench_counts_the_host_waits_of_one_update(monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script("bench_metrics")
    modes = ["default"]
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    class Waiting:
        """A metric whose update makes the host wait twice while the debug mode warns."""

        def to(self, device: object) -> Waiting:
            return self

        def update(self, preds: torch.Tensor, mask: torch.Tensor) -> None:
            if modes[-1] == "warn":
                for _ in range(2):
                    warnings.warn(f"{script.SYNC_WARNING} (a test)", UserWarning, stacklevel=1)

    values = torch.zeros(1, 2, 2)
    assert script.host_waits(Waiting, values, values) == 2
    assert modes == ["default", "warn", "default"]  # on around the second update only, then off again
