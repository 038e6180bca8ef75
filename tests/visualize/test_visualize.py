"""cnnlab-visualize: the course's filters, a trained network's filters, feature maps, CAMs and embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from PIL import Image

from cnnlab import CONF_DIR
from cnnlab.errors import ConfigError
from cnnlab.train import train
from cnnlab.visualize import filters, inside
from cnnlab.visualize.cli import main


def test_sobel_x_answers_a_vertical_edge_only_next_to_it() -> None:
    image = torch.zeros(12, 12)
    image[:, 7:] = 1.0  # dark left, bright right: one vertical edge between columns 6 and 7
    response = filters.respond(image, filters.KERNELS["sobel_x"])
    assert response.shape == (10, 10)  # a valid 3x3 convolution: two pixels fewer each way
    columns = response.abs().sum(0)
    # output column j covers input columns j..j+2: only those spanning the edge (j = 5, 6) respond
    assert columns.nonzero().flatten().tolist() == [5, 6]
    assert filters.respond(image, filters.KERNELS["sobel_y"]).abs().max() == 0  # no horizontal edge
    pooled = filters.pool(response)
    assert pooled["max_pool"].shape == pooled["avg_pool"].shape == (5, 5)
    # the edge's two columns fall in two 2x2 windows: max keeps its strength, the average halves it
    assert pooled["max_pool"].max() == response.max() == 4
    assert pooled["avg_pool"].max() == response.max() / 2


def test_a_kernel_of_ones_own_is_read_and_a_malformed_one_refused() -> None:
    assert filters.parse_kernel("-1,0,1;-2,0,2;-1,0,1") == filters.KERNELS["sobel_x"]
    for bad in ("1,0;1", "a,b;c,d", ""):
        with pytest.raises(ConfigError, match="rows separated by ';'"):
            filters.parse_kernel(bad)


def test_filters_command_writes_one_picture_with_every_kernel(tmp_path: Path) -> None:
    picture = np.zeros((30, 40), np.uint8)
    picture[:, 20:] = 255
    Image.fromarray(picture).save(tmp_path / "edge.png")
    main(["filters", str(tmp_path / "edge.png"), "--kernel", "0,1,0;1,-4,1;0,1,0", "--out", str(tmp_path)])
    written = Image.open(tmp_path / "filters_edge.png")
    # a row per kernel (six of the course's and the one given), four pictures each
    assert written.height > written.width and written.height > 6 * 200


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "run"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "trainer.max_epochs=3",
                "trainer.accelerator=cpu",
                "export=null",
                "model.head_hidden=0",
            ],
        )
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.trainer.enable_progress_bar = False
        for key in ("progress_bar", "model_summary"):
            cfg.callbacks.pop(key)
    train(cfg)
    return out


@pytest.fixture(scope="module")
def digit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("digit") / "seven.png"
    digits = load_digits()
    index = int(np.flatnonzero(digits.target == 7)[-1])
    Image.fromarray((digits.images[index] * 255 / 16).astype("uint8")).resize((24, 30)).save(path)
    return path


def test_weights_are_the_first_convolutions_filters_in_a_grid(digits_run: Path) -> None:
    loaded = inside.load(digits_run)
    weights = inside.first_filters(loaded.net)
    first_conv = next(m for m in loaded.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(weights, first_conv.weight.detach())
    tiles = inside.filter_tiles(weights)
    assert len(tiles) == first_conv.out_channels and tiles[0].shape == (*first_conv.kernel_size, 1)
    assert all(t.min() == 0 and abs(t.max() - 1) < 1e-6 for t in tiles)  # each filter on its own scale
    main(["weights", str(digits_run)])
    assert (digits_run / "figures" / "weights_first_conv.png").is_file()
    assert any((digits_run / "tensorboard").rglob("visualize/events.out.tfevents.*"))


def test_features_of_each_stage_have_that_stages_shape(digits_run: Path, digit: Path) -> None:
    loaded = inside.load(digits_run)
    net_input, shown = inside.prepare(loaded, digit)
    assert (
        net_input.shape == (1, 1, 16, 16)
        and shown.shape == (1, 16, 16)
        and 0 <= shown.min() <= shown.max() <= 1
    )
    expected = loaded.net.forward_stages(net_input)
    for stage in range(len(loaded.net.stages)):
        chosen, maps = inside.features(loaded, net_input, stage)
        assert chosen == stage and maps.shape == expected[stage].shape[1:]
    with pytest.raises(ConfigError, match=r"--stage 9: .* has stages 0\.\."):
        inside.features(loaded, net_input, 9)
    main(["features", str(digits_run), str(digit), "--stage", "0", "--out", str(digits_run / "f")])
    assert (digits_run / "f" / f"features_stage0_{digit.stem}.png").is_file()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_cam_of_a_classifier_is_a_map_over_the_image(digits_run: Path, digit: Path, method: str) -> None:
    loaded = inside.load(digits_run)
    net_input, _ = inside.prepare(loaded, digit)
    values, what = inside.cam(loaded, net_input, 7, method)
    assert values.shape == (16, 16) and 0 <= values.min() and values.max() <= 1 + 1e-6
    assert what == f"{method} for class 7"
    main(["cam", str(digits_run), str(digit), "--method", method, "--class", "7"])
    assert Image.open(digits_run / "figures" / f"cam_{method}_{digit.stem}.png").height > 2 * 16


def test_cam_refuses_an_unknown_method_and_class(digits_run: Path, digit: Path) -> None:
    with pytest.raises(SystemExit, match="--method gradkam: choose one of gradcam, gradcam\\+\\+"):
        main(["cam", str(digits_run), str(digit), "--method", "gradkam"])
    with pytest.raises(SystemExit, match="--class 12: the model has classes 0..9"):
        main(["cam", str(digits_run), str(digit), "--class", "12"])
    with pytest.raises(SystemExit, match="give a run folder"):
        main(["weights", str(digits_run / "nothing")])


def test_embedding_projects_the_test_split_and_marks_the_mistakes(digits_run: Path) -> None:
    from cnnlab.visualize import embedding

    loaded = inside.load(digits_run)
    values, truth, guessed = embedding.test_features(loaded, 200)
    assert values.shape[0] == truth.shape[0] == guessed.shape[0] == 200 and values.ndim == 2
    assert (truth == guessed).mean() > 0.5  # a trained classifier: most points are right
    for method in ("pca", "tsne"):
        assert embedding.project(values, method).shape == (200, 2)
    main(["embedding", str(digits_run), "--limit", "120"])
    assert (digits_run / "figures" / "embedding.png").is_file()


def _images_logged(run: Path) -> dict[str, tuple[int, int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = {}
    for events in (run / "tensorboard").rglob("events.out.tfevents.*"):
        log = EventAccumulator(str(events), size_guidance={"images": 0})
        log.Reload()
        for tag in log.Tags()["images"]:
            found[tag] = (log.Images(tag)[-1].width, log.Images(tag)[-1].height)
    return found


def test_a_run_with_frozen_stages_logs_its_filters_and_cams_when_it_ends(make_cfg) -> None:
    # frozen stages pass no gradient to the last stage's maps: the callback turns them on for the CAM
    cfg = make_cfg(
        "callbacks=[default,visualize]",
        "callbacks.visualize.num_images=3",
        "finetune=frozen",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "export=null",
    )
    train(cfg)
    logged = _images_logged(Path(cfg.paths.output_dir))
    assert {"visualize/filters", "visualize/cam"} <= set(logged)
    # three 16 px digits enlarged 4 times, side by side with 2 px between them
    assert logged["visualize/cam"] == (3 * 64 + 4 * 2, 64 + 2 * 2)


def test_a_wrong_visualize_option_is_refused_before_any_data_is_read(make_cfg, monkeypatch) -> None:
    from cnnlab.data.digits import DigitsDataModule

    monkeypatch.setattr(DigitsDataModule, "setup", lambda *a: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match="callbacks.visualize.method=gradkam: choose one of gradcam"):
        train(make_cfg("callbacks=[default,visualize]", "callbacks.visualize.method=gradkam"))
