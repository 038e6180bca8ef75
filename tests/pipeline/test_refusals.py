"""Runs that could only report numbers meaning nothing are refused before any data is read."""

from __future__ import annotations

import pytest

from cnnlab.config import ConfigError
from cnnlab.data.digits import DigitsDataModule
from cnnlab.train import train


def test_anomaly_detection_with_every_class_normal_is_refused(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DigitsDataModule, "setup", lambda *a: pytest.fail("data was read"))
    every = "data.normal_classes=[0,1,2,3,4,5,6,7,8,9]"
    with pytest.raises(ConfigError, match=r"names every one of the 10 classes normal.*no anomalies"):
        train(make_cfg("experiment=ae_anomaly_digits", every))
    # one class left out is an anomaly to test on: the check lets it through to the data
    with pytest.raises(pytest.fail.Exception, match="data was read"):
        train(make_cfg("experiment=ae_anomaly_digits", "data.normal_classes=[0,1,2,3,4,5,6,7,8]"))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["task=autoencoder", "model=autoencoder_conv", "task.loss=huber"], "task.loss"),
        (["experiment=ae_denoise_digits", "task.noise=pink"], "task.noise"),
        (["experiment=ae_anomaly_digits", "task.score=median"], "task.score"),
        (["experiment=ae_denoise_digits", "task.noise_level=-1"], "task.noise_level"),
        (["callbacks=[default,ema]", "callbacks.ema.decay=1.5"], "decay"),
    ],
)
def test_task_and_callback_options_are_refused_before_any_data_is_read(
    make_cfg, monkeypatch: pytest.MonkeyPatch, overrides: list[str], words: str
) -> None:
    monkeypatch.setattr(DigitsDataModule, "setup", lambda *a: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=words):
        train(make_cfg(*overrides))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["data=image_folder"], r"data.root is not set: the dataset reads its files from there"),
        (["data=image_folder", "data.root=null"], r"data.root=null: .*Give the folder, e.g. data.root="),
        (["data=mnist", "data.root=null"], r"data.root=null"),
        (["task=segmentation", "model=unet", "data=mask_folder", "data.root=' '"], r"data.root=' '"),
    ],
)
def test_a_dataset_without_its_folder_is_refused_naming_data_root(
    make_cfg, overrides: list[str], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        train(make_cfg(*overrides))


def test_an_option_that_does_nothing_in_the_chosen_setting_is_said_so(make_cfg) -> None:
    from cnnlab.config import idle_options

    cfg = make_cfg("task=autoencoder", "model=autoencoder_conv", "task.noise_level=0.5")
    assert idle_options(cfg, ["task.noise_level=0.5", "task.loss=l1"]) == [
        "task.noise_level does nothing with task.mode=reconstruct: it acts with task.mode=denoise only"
    ]
    denoising = make_cfg("experiment=ae_denoise_digits", "task.noise_level=0.5")
    assert idle_options(denoising, ["task.noise_level=0.5"]) == []
    anomaly = make_cfg("experiment=ae_anomaly_digits", "task.top_fraction=0.1")
    assert idle_options(anomaly, ["+task.top_fraction=0.1"]) == [
        "task.top_fraction does nothing with task.score=mean: it acts with task.score=topk only"
    ]
