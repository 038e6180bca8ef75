"""``import cnnlab``: compose, fit, load, list_runs, as a notebook calls them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakedata import write_image_folder

import cnnlab
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError

#: a short run on the embedded digits, one export format, written under the test's folder
QUICK = ["trainer.max_epochs=2", "export.formats=[torchscript]", "trainer.accelerator=cpu"]


def test_import_cnnlab_loads_no_torch() -> None:
    code = (
        "import sys, cnnlab; cnnlab.CONF_DIR, cnnlab.__version__, cnnlab.CnnlabError; "
        "print(sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_module_runs_stays_a_module_and_the_function_is_list_runs() -> None:
    from cnnlab import runs

    assert runs.__name__ == "cnnlab.runs" and callable(cnnlab.list_runs)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        cnnlab.nonsense  # noqa: B018


def test_compose_takes_strings_and_dicts_and_names_a_fresh_run_folder(tmp_path: Path) -> None:
    cfg = cnnlab.compose(
        "model=lenet",
        {"paths.output_root": str(tmp_path), "export.formats": ["torchscript", "onnx"], "seed": 3},
    )
    assert "lenet" in cfg.model._target_
    assert list(cfg.export.formats) == ["torchscript", "onnx"] and cfg.seed == 3
    folder = Path(cfg.paths.output_dir)
    assert folder.is_absolute() and folder.parent == (tmp_path / "train" / "runs").resolve()
    assert not folder.exists()
    # a folder a run already wrote into is never reused (two compositions in the same second)
    folder.mkdir(parents=True)
    (folder / "status.json").write_text("{}")
    again = cnnlab.compose(f"paths.output_root={tmp_path}", "model=lenet")
    assert Path(again.paths.output_dir) != folder


def test_a_misspelt_option_names_the_valid_choices() -> None:
    with pytest.raises(ConfigError) as err:
        cnnlab.compose("model=simple_cn")
    message = str(err.value)
    assert "Did you mean model=simple_cnn?" in message and "lenet" in message and "resnet" in message
    assert "\n" not in message


def test_a_misspelt_key_names_the_keys_of_its_group() -> None:
    with pytest.raises(ConfigError, match=r"trainer takes: .*max_epochs.*Did you mean trainer.max_epochs\?"):
        cnnlab.compose("trainer.max_epoch=5")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs=abc: give a whole number"),
        ("optimized_metric=val/accuracy", "val/acc"),
        ("task=detection", "Models for task=detection"),
        ("export.formats=[h5]", "pt2, onnx, torchscript"),
        ("model=mlp,simple_cnn", "sweep from the command line"),
    ],
)
def test_compose_refuses_what_the_command_line_refuses(override: str, named: str) -> None:
    with pytest.raises(CnnlabError, match=named):
        cnnlab.compose(override)


def test_resume_latest_without_runs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="there is no run under"):
        cnnlab.compose("resume=latest", f"paths.output_root={tmp_path}")


def test_load_names_what_it_takes(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist; load takes a run folder"):
        cnnlab.load(tmp_path / "no_such_run")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"export": None, "best_checkpoint": str(run / "best.ckpt")}))
    with pytest.raises(CheckpointError, match=r"no exported model \(it ran with export=null\).*export"):
        cnnlab.load(run)


def fake_run(folder: Path, choices: dict[str, str], status: dict, metrics: dict) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 1\n")
    lines = "".join(f"      {k}: {v}\n" for k, v in choices.items())
    (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n{lines}")
    (folder / "status.json").write_text(json.dumps(status))
    if metrics:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_list_runs_gives_a_row_per_run_with_its_metric_and_test_scores(tmp_path: Path) -> None:
    classify = {"task": "classification", "model": "simple_cnn", "data": "digits"}
    fake_run(
        tmp_path / "train" / "runs" / "a",
        classify,
        {"status": "completed", "started": "2026-01-01T10:00:00"},
        {"optimized_metric": "val/acc", "best/val/acc": 0.97, "val/acc": 0.95, "test/acc": 0.96},
    )
    fake_run(
        tmp_path / "multirun" / "x" / "0",
        {**classify, "model": "mlp"},
        {"status": "failed", "started": "2026-01-02T10:00:00", "error": "bad"},
        {},
    )
    # a demo's summary beside its runs is no run
    (tmp_path / "transfer_demo").mkdir()
    (tmp_path / "transfer_demo" / "metrics.json").write_text(json.dumps({"gain": 0.1}))
    table = cnnlab.list_runs(tmp_path)
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert [Path(r["folder"]).name for r in rows] == ["a", "0"]
    first, second = rows
    assert (first["task"], first["model"], first["status"]) == ("classification", "simple_cnn", "completed")
    assert (first["metric"], first["value"], first["test/acc"]) == ("val/acc", 0.97, 0.96)
    assert first["date"] == "2026-01-01T10:00:00"
    assert (second["model"], second["status"], second["value"]) == ("mlp", "failed", None)


def test_a_run_that_fails_raises_its_error_and_records_it(tmp_path: Path) -> None:
    cfg = cnnlab.compose(
        *QUICK, f"paths.output_root={tmp_path}", "data=mnist", "data.download=false", f"data.root={tmp_path}"
    )
    with pytest.raises(CnnlabError, match="MNIST is not in") as err:
        cnnlab.fit(cfg)
    assert not isinstance(err.value, SystemExit)
    run = cnnlab.Run(cfg.paths.output_dir)
    assert run.status == "failed" and "MNIST is not in" in run.error
    assert "Traceback" in (run.folder / "train.log").read_text()  # the traceback is in the log, not shown
    assert (run.folder / ".hydra" / "overrides.yaml").is_file()
    # the same config again: a new folder, the first run's record kept
    with pytest.raises(CnnlabError):
        cnnlab.fit(cfg)
    assert len(list((tmp_path / "train" / "runs").iterdir())) == 2


def test_a_photo_folder_is_measured_once_per_config_and_again_when_it_trains_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "photos"
    write_image_folder(root, ["cat", "dog"], n_per_class=3)
    quick = ["trainer.max_epochs=1", "export=null", "test=false", "trainer.accelerator=cpu"]
    quick += ["data=image_folder", f"data.root={root}", f"paths.output_root={tmp_path}"]
    with caplog.at_level(logging.INFO, logger="cnnlab.data.image_folder"):
        cfg = cnnlab.compose(*quick)
        assert [(cfg.data.num_classes, cfg.data.image_size) for _ in range(3)] == [(2, 36)] * 3
    assert caplog.text.count("median shorter side") == 1  # each access scanned and logged it before
    write_image_folder(root, ["cat", "dog", "bird"], n_per_class=3)
    # the class folder added since: counted again, not the config's 2 classes of before
    assert cnnlab.fit(cfg).status == "completed"


@pytest.mark.slow
def test_fit_runs_the_pipeline_and_load_predicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = cnnlab.fit([*QUICK, f"paths.output_root={tmp_path}"])
    assert run.status == "completed"
    assert run.metrics == json.loads((run.folder / "metrics.json").read_text())
    assert run.metrics["test/acc"] > 0.5 and run.best_checkpoint.is_file()
    assert (run.export / "model.pt").is_file()
    status = json.loads((run.folder / "status.json").read_text())
    assert status["val/acc"] == run.metrics["best/val/acc"]
    assert "epoch 2/2" in capsys.readouterr().out  # the epoch lines reach the console (a notebook's cell)
    assert "epoch 2/2" in (run.folder / "train.log").read_text()

    model = cnnlab.load(run)
    assert model.task == "classification" and model.contract["in_channels"] == 1
    (record,) = model.predict(torch.rand(1, 8, 8), top_k=3)
    assert len(record["top"]) == 3 and {"class", "probability"} <= set(record["top"][0])
    assert len(model.predict(torch.rand(4, 1, 16, 16))) == 4
    with pytest.raises(ConfigError, match="predict takes image files"):
        model.predict([42])
    (row,) = (lambda t: t.to_dict("records") if hasattr(t, "to_dict") else t)(cnnlab.list_runs(tmp_path))
    assert row["value"] == run.metrics["best/val/acc"] and row["model"] == "simple_cnn"
