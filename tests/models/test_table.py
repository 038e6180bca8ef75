"""cnnlab-models: the comparison table agrees with torchvision's metadata, sorts, writes its files, runs."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from cnnlab import CONF_DIR
from cnnlab.errors import ConfigError
from cnnlab.models import table

ROOT = Path(__file__).resolve().parents[2]
#: the classifiers built from torchvision's builders, each with the arch its default config builds
TORCHVISION_OPTIONS = {
    "alexnet": "alexnet",
    "convnext": "convnext_tiny",
    "efficientnet": "efficientnet_b0",
    "googlenet": "googlenet",
    "inception_v3": "inception_v3",
    "mobilenet_v3": "mobilenet_v3_large",
    "resnet": "resnet18",
    "vgg": "vgg11_bn",
}


def default_meta(arch: str) -> dict:
    return tvm.get_model_weights(arch).DEFAULT.meta


def test_resnet18_has_torchvision_s_parameters_gmacs_and_metadata() -> None:
    row = table.describe("resnet", 224, 1000)
    meta = default_meta("resnet18")
    assert row["arch"] == "resnet18"
    assert row["params"] == meta["num_params"] == 11_689_512
    # torchvision records _ops in GFLOPs rounded to 3 decimals; FlopCounterMode's FLOPs / 2 is the same figure
    assert row["gmacs"] == pytest.approx(meta["_ops"], abs=5e-4)
    assert row["top1"] == meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert row["weights_mb"] == meta["_file_size"]
    assert (row["stages"], row["year"], row["tv_weights"], row["note"]) == (5, 2015, "IMAGENET1K_V1", "")


@pytest.mark.parametrize("option", sorted(TORCHVISION_OPTIONS))
def test_every_torchvision_classifier_matches_its_metadata(option: str) -> None:
    arch = TORCHVISION_OPTIONS[option]
    meta = default_meta(arch)
    row = table.describe(option, 224, 1000)
    assert row["arch"] == arch
    if option == "inception_v3":
        # torchvision's weights keep the auxiliary classifier cnnlab leaves out; their _ops are at 299 px
        with torch.device("meta"):
            aux = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).AuxLogits
        assert row["params"] + sum(p.numel() for p in aux.parameters()) == meta["num_params"]
        assert f"{meta['num_params']:,}" in row["note"] and "299 px" in row["note"]
        assert table.describe(option, 299, 1000)["gmacs"] == pytest.approx(meta["_ops"], abs=5e-4)
    else:
        assert row["params"] == meta["num_params"]
        assert row["gmacs"] == pytest.approx(meta["_ops"], abs=5e-4)
        assert row["note"] == ""
    assert row["top1"] == meta["_metrics"]["ImageNet-1K"]["acc@1"]


def test_every_classifier_option_has_a_row_and_a_paper_and_nothing_else_has_one() -> None:
    options = table.classifier_options()
    assert set(TORCHVISION_OPTIONS) | {"lenet", "mlp", "simple_cnn"} <= set(options)
    assert not {"unet", "fcos", "deeplabv3", "autoencoder_conv"} & set(options)
    for option in options:
        net = table.build(option, 64 if option != "inception_v3" else 75, 10, "meta")
        assert table.paper_of(net) is not None, f"model={option} has no entry in cnnlab.models.table.PAPERS"
    with pytest.raises(ConfigError, match="fcos: not an image classifier.*resnet"):
        table.pick_models(["resnet", "fcos"])


def test_a_config_asking_for_pretrained_weights_is_built_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: list[str]
) -> None:
    (tmp_path / "model").mkdir()
    text = (CONF_DIR / "model" / "resnet.yaml").read_text().replace("weights: null", "weights: DEFAULT")
    (tmp_path / "model" / "resnet.yaml").write_text(text)
    monkeypatch.setattr(table, "CONF_DIR", tmp_path)
    assert table.model_config("resnet", 64, 10)["weights"] is None
    assert table.table_rows(["resnet"], size=64)[0]["params"] > 0
    assert offline == []  # nothing was fetched


def test_rows_sort_by_any_column_empty_cells_last_and_a_bad_column_is_refused() -> None:
    rows = table.table_rows(["simple_cnn", "resnet", "lenet", "mlp"], size=64, classes=10)
    by_params = [r["model"] for r in table.sort_rows(rows, "params")]
    assert by_params == ["simple_cnn", "lenet", "mlp", "resnet"]
    assert [r["model"] for r in table.sort_rows(rows, "params", descending=True)] == by_params[::-1]
    # only resnet has torchvision's top-1; the others follow in their given order, either way
    assert [r["model"] for r in table.sort_rows(rows, "top1", descending=True)] == [
        "resnet",
        "simple_cnn",
        "lenet",
        "mlp",
    ]
    assert [r["model"] for r in table.sort_rows(rows, "arch")] == ["lenet", "mlp", "resnet", "simple_cnn"]
    with pytest.raises(ConfigError) as refused:
        table.sort_rows(rows, "flops")
    assert all(column in str(refused.value) for column in table.COLUMNS)


def test_the_command_writes_one_row_per_model_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table.main(
        ["--models", "lenet,resnet", "--size", "64", "--no-speed", "--sort", "gmacs", "--out", str(tmp_path)]
    )
    printed, progress = capsys.readouterr()
    with (tmp_path / "models.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["lenet", "resnet"]
    assert list(rows[0]) == list(table.COLUMNS)
    assert int(rows[1]["params"]) == 11_689_512  # resnet18 at 64 px keeps its 7x7 stem, 1000 classes
    markdown = (tmp_path / "models.md").read_text()
    assert markdown == printed
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines] == ["| model", "| lenet", "| resnet"]
    assert "11,689,512" in lines[2] and "[1/2] lenet" in progress and "[2/2] resnet" in progress


def test_speed_is_measured_in_both_modes_and_skipped_with_no_speed() -> None:
    fast = table.table_rows(["lenet"], size=32, classes=10, batch=4, device=torch.device("cpu"), seconds=0.05)
    assert fast[0]["eval_img_s"] > 0 and fast[0]["train_img_s"] > 0
    assert "eval_img_s" not in table.table_rows(["lenet"], size=32, classes=10)[0]
    # a network whose weights and gradients cannot fit is not built for timing
    assert "speed not measured" in table.too_big(10**13, torch.device("cpu"))
    assert table.too_big(1000, torch.device("cpu")) == ""


def test_a_network_that_cannot_take_the_size_gets_its_reason_not_a_crash() -> None:
    rows = table.table_rows(["inception_v3", "lenet"], size=64)
    assert "at least 75 px" in rows[0]["note"] and "params" not in rows[0]
    assert rows[1]["params"] > 0


def test_the_console_script_entry_point_runs(capsys: pytest.CaptureFixture) -> None:
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["cnnlab-models"].partition(":")
    main = getattr(importlib.import_module(module), function)
    main(["--models", "simple_cnn", "--size", "32", "--classes", "10", "--no-speed"])
    assert "| simple_cnn | SimpleCNN |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["--sort", "flops"])
    assert refused.value.code == 2
    assert "choose one of model, arch, params, gmacs" in capsys.readouterr().err
