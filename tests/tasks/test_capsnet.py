"""`model=capsnet` in the classification pipeline: its own loss; metrics, figures, export, predict, freeze."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.app.server import create_app
from cnnlab.checkpoints import load_task
from cnnlab.config import ConfigError
from cnnlab.finetune import parameter_groups
from cnnlab.models.capsnet import CapsNet
from cnnlab.serving import runtime
from cnnlab.serving.preprocess import Preprocess
from cnnlab.tasks.classification import ClassificationTask
from cnnlab.train import build, make_trainer, train

with warnings.catch_warnings():  # Starlette asks for httpx2 and warns on httpx, which its TestClient runs on
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

TINY = ["model.conv_channels=16", "model.primary_types=4", "model.decoder=[32,64]", "data.batch_size=32"]
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture
def capsnet_cfg(make_cfg):
    """`python train.py model=capsnet data=digits`, small and short."""

    def _make(*overrides: str):
        return make_cfg("model=capsnet", "data=digits", *TINY, *SHORT, *overrides)

    return _make


def test_capsnet_trains_tests_and_exports_like_any_classifier(capsnet_cfg, tmp_path: Path) -> None:
    cfg = capsnet_cfg("trainer.limit_test_batches=2", "export.formats=[torchscript,pt2]")
    record = train(cfg)
    run = Path(cfg.paths.output_dir)
    for key in ("val/acc", "val/loss", "test/acc", "test/f1", "test/acc_top5", "test/loss"):
        assert record[key] is not None, key
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"test/confusion_matrix", "test/predictions"} <= set(events.Tags()["images"])

    described = json.loads((run / "export" / "model.json").read_text())
    assert described["outputs"] == ["probabilities"]  # no class activation maps: no pooled linear head
    for fmt in ("torchscript", "pt2"):
        assert "error" not in described["formats"][fmt], described["formats"][fmt]
        assert described["formats"][fmt]["max_abs_diff"]["probabilities"] < 1e-5

    net = load_task(record["best_checkpoint"]).net.eval()
    preprocess = Preprocess.from_contract(described)
    images = [torch.randint(0, 256, (1, 20 + i, 24), dtype=torch.uint8) for i in range(6)]
    with torch.no_grad():
        longest = [int(net(preprocess(runtime.as_batch(im, 1))).norm(dim=-1).argmax()) for im in images]
    for name in ("model.pt", "model.pt2"):
        records = runtime.predict(runtime.load(run / "export" / name), images, top_k=3)
        assert [r["top"][0]["index"] for r in records] == longest  # top-1 is the longest capsule
        assert all("cam" not in r and len(r["top"]) == 3 for r in records)
        json.dumps(records)
    upload = tmp_path / "upload.png"
    Image.fromarray(images[0][0].numpy()).save(upload)
    with TestClient(create_app(runtime.load(run / "export"))) as client:  # the app serves it the same way
        answer = client.post("/predict", files={"file": (upload.name, upload.read_bytes())})
    assert answer.status_code == 200 and len(answer.json()["record"]["top"]) == 5


def test_the_task_gives_the_network_pixels_for_its_reconstruction() -> None:
    task = ClassificationTask(CapsNet(10, 1, 16, conv_channels=8, primary_types=2), 10, {"lr": 1e-3})
    task.use_data({"mean": [0.25], "std": [0.5]})
    pixels = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(task.pixels((pixels - 0.25) / 0.5), pixels)


def test_label_smoothing_is_refused_for_a_network_with_its_own_loss(capsnet_cfg) -> None:
    with pytest.raises(ConfigError, match=r"task.label_smoothing=0.1 smooths cross-entropy, but CapsNet"):
        build(capsnet_cfg("task.label_smoothing=0.1"))


@pytest.mark.parametrize(("freeze", "frozen"), [(1, 1), ("all", 2)])
def test_freeze_depth_freezes_the_conv_then_the_primary_capsules(capsnet_cfg, freeze, frozen: int) -> None:
    cfg = capsnet_cfg("finetune=partial", f"finetune.freeze={freeze}", "test=false", "export=null")
    with open_dict(cfg):
        cfg.callbacks = {}
    datamodule, task = build(cfg)
    groups = parameter_groups(task.net, 1e-3, {})
    assert [g["name"] for g in groups] == ["stage0", "stage1", "head"]
    head = {id(p) for p in [*task.net.head.parameters(), *task.net.decoder.parameters()]}
    assert {id(p) for p in groups[-1]["params"]} == head  # the class capsules and the decoder
    before = copy.deepcopy(task.net.state_dict())
    make_trainer(cfg).fit(task, datamodule=datamodule)
    after = task.net.state_dict()
    moved = {module_of(k) for k in before if not torch.equal(before[k], after[k])}
    assert moved == {f"stages.{i}" for i in range(frozen, 2)} | {"head", "decoder"}


def module_of(key: str) -> str:
    """``stages.1`` for ``stages.1.conv.weight``, ``head`` for ``head.weight``."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "stages" else parts[0]
