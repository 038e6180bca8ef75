"""Inside a trained network: its first filters, a stage's feature maps, class activation maps, embeddings.

Every network's ``forward_stages`` takes what its ``forward`` takes: the image prepared as the checkpoint's
contract says (evaluation geometry, then its normalisation; detectors normalise inside and take [0, 1]).
CAMs come from the ``grad-cam`` package: gradient and score methods for classifiers, its
``SemanticSegmentationTarget`` for segmenters, EigenCAM (no gradient, no target) on the last backbone stage
of one-stage detectors; an autoencoder's or anomaly detector's map is its per-pixel reconstruction error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision import tv_tensors

from cnnlab.checkpoints import load_task
from cnnlab.data.io import read_image
from cnnlab.data.transforms import eval_transform
from cnnlab.errors import CheckpointError, ConfigError


@dataclass
class Loaded:
    """A checkpoint's task (network inside), its contract and the run folder it came from."""

    task: Any
    contract: dict[str, Any]
    run: Path
    checkpoint: Path

    @property
    def net(self) -> nn.Module:
        return self.task.net


def load(source: str | Path) -> Loaded:
    """A run folder (its best checkpoint) or a ``.ckpt`` file, ready for pictures; gradients on everywhere."""
    path = Path(source)
    ckpt = path / "checkpoints" / "best.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise CheckpointError(f"{source}: give a run folder (with checkpoints/best.ckpt) or a .ckpt file")
    task = load_task(ckpt).eval()
    # a run trained with frozen stages reloads them frozen; gradient-based maps need every stage's gradient
    task.requires_grad_(True)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return Loaded(task, dict(task.contract), run, ckpt)


def prepare(loaded: Loaded, image_path: str | Path) -> tuple[Tensor, Tensor]:
    """The image as the network sees it (1, C, H, W), and as a person sees it: [0, 1] at that geometry."""
    c = loaded.contract
    image = tv_tensors.Image(read_image(Path(image_path), int(c["in_channels"])))
    size, resize = int(c["image_size"]), int(c.get("resize_size") or c["image_size"])
    shown = eval_transform(size, resize, None, None, c["geometry"])(image).as_subclass(Tensor)
    net_input = eval_transform(size, resize, c.get("mean"), c.get("std"), c["geometry"])(image)
    return net_input.as_subclass(Tensor)[None], shown


def first_filters(net: nn.Module) -> Tensor:
    """The weights of the network's first convolution (out, in, kh, kw)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            return module.weight.detach().cpu()
    raise ConfigError(f"{type(net).__name__} has no convolution: it has no filters to show (an MLP?)")


def filter_tiles(weights: Tensor) -> list[np.ndarray]:
    """Each filter scaled to [0, 1] on its own: RGB for colour filters (3 input channels), grey otherwise."""
    tiles = []
    for w in weights:
        w = w if w.shape[0] == 3 else w.mean(0, keepdim=True)
        low, high = w.min(), w.max()
        tiles.append(((w - low) / (high - low + 1e-12)).permute(1, 2, 0).numpy())
    return tiles


def features(loaded: Loaded, net_input: Tensor, stage: int | None) -> tuple[int, Tensor]:
    """The feature maps (C, h, w) of ``stage`` (default: the last; negative counts from the end)."""
    stages = loaded.net.stages
    chosen = len(stages) - 1 if stage is None else stage
    if not -len(stages) <= chosen < len(stages):
        raise ConfigError(f"--stage {stage}: {type(loaded.net).__name__} has stages 0..{len(stages) - 1}")
    chosen %= len(stages)
    with torch.no_grad():
        outputs = loaded.net.forward_stages(net_input)
    maps = outputs[chosen]
    if isinstance(maps, dict):  # a stage returning named maps (an FPN): the first, the finest
        maps = next(iter(maps.values()))
    if maps.dim() != 4:
        raise ConfigError(f"stage {chosen} returns {tuple(maps.shape)}, not feature maps (N, C, h, w)")
    return chosen, maps[0]


#: the CAM methods of the grad-cam package, by the name --method takes
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}


def cam(loaded: Loaded, net_input: Tensor, target: int | None, method: str) -> tuple[np.ndarray, str]:
    """The map (h, w) in [0, 1] of what drove the network's output for ``target``, and what it shows."""
    task = loaded.contract.get("task")
    if task in ("autoencoder", "anomaly"):
        from cnnlab.serving.anomaly import anomaly_map

        with torch.no_grad():
            error = anomaly_map(net_input, loaded.net(net_input))[0].numpy()
        return error / (error.max() or 1.0), "reconstruction error"
    if method not in METHODS:
        raise ConfigError(f"--method {method}: choose one of {', '.join(METHODS)}")
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

    layer = loaded.net.stages[-1]
    names = list(loaded.contract.get("class_names") or [])
    if task == "detection":
        # one-stage detectors return boxes, not scores: EigenCAM needs neither gradient nor target
        if method != "eigencam":
            raise ConfigError(f"--method {method} needs class scores; a detector's CAM is --method eigencam")
        wrapped = _Detections(loaded.net)
        with pytorch_grad_cam.EigenCAM(wrapped, [layer]) as explainer:
            grey = explainer(net_input, targets=[_NoTarget()])[0]
        return grey, "EigenCAM of the last backbone stage"
    with torch.no_grad():
        scores = _Scores(loaded.net)(net_input)
    if task == "segmentation":
        classes = scores.argmax(1)[0]
        category = int(target) if target is not None else _largest_object_class(classes)
        targets = [SemanticSegmentationTarget(category, (classes == category).float().numpy())]
    else:
        category = int(target) if target is not None else int(scores.argmax(1)[0])
        targets = [ClassifierOutputTarget(category)]
    if not 0 <= category < len(names or range(scores.shape[1])):
        raise ConfigError(f"--class {target}: the model has classes 0..{scores.shape[1] - 1}")
    explainer_cls = getattr(pytorch_grad_cam, METHODS[method])
    with explainer_cls(model=_Scores(loaded.net), target_layers=[layer]) as explainer:
        grey = explainer(input_tensor=net_input, targets=targets)[0]
    label = names[category] if category < len(names) else str(category)
    return grey, f"{method} for class {label}"


def _largest_object_class(classes: Tensor) -> int:
    """The class other than background (0) covering most pixels, else background."""
    counts = torch.bincount(classes.flatten())
    counts[0] = 0
    return int(counts.argmax()) if counts.sum() > 0 else 0


class _Scores(nn.Module):
    """The network as grad-cam calls it: class scores out (segmenters' logits, classifiers' scores)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        output = self.net(x)
        # a network that brings its own prediction (a capsule network's lengths) scores classes through it
        return self.net.probabilities(output) if hasattr(self.net, "probabilities") else output


class _Detections(nn.Module):
    """A detector called on a batch tensor, as grad-cam calls a model; its detections are not used."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        self.net(list(x))
        return x.new_zeros(x.shape[0], 1)


class _NoTarget:
    """EigenCAM's target: unused, since the first principal component needs none."""

    def __call__(self, output: Tensor) -> Tensor:
        return output.sum()
