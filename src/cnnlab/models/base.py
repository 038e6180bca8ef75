"""The contract every network keeps: ordered ``stages`` (input first), and what the network outputs.

Freeze depth, per-stage learning rates, transfer from a checkpoint and feature-map pictures are generic code
over ``stages`` (see ``cnnlab.finetune``): ``freeze=k`` means the first k stages for every architecture.
``forward_stages`` returns every stage's output, the hook a UNet decoder, an FPN or a feature-map figure
needs. ``output`` names what ``forward`` returns, so a task can refuse a network it cannot train.

Pretrained weights describe the input they expect in ``preprocessing``, a dict whose fields are all
optional: ``mean``, ``std`` (per channel), ``image_size``, ``resize_size``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

#: what a network's forward returns, by name (checked against the task before a run starts)
OUTPUTS = {
    "scores": "one score per class for each image (N, K)",
    "image": "an image of the input's shape (N, C, H, W)",
    "pixel_scores": "one score per class for each pixel (N, K, H, W)",
    "detections": "boxes, labels and scores per image",
}


class StagedNet(nn.Module):
    """A network whose backbone is a sequence of ``stages``, input first."""

    #: what ``forward`` returns: a key of ``OUTPUTS``
    output: ClassVar[str] = ""
    stages: nn.ModuleList
    #: the input the loaded weights expect (optional fields), or None when trained from scratch
    preprocessing: dict[str, Any] | None = None
    #: the torchvision builder this network reproduces (``resnet18``; its weights' metadata describes it),
    #: None for cnnlab's own networks
    torchvision_arch: str | None = None

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The output of every stage, in order."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class Classifier(StagedNet):
    """A backbone of ordered stages (input to head) followed by a head of class scores."""

    output: ClassVar[str] = "scores"

    def __init__(self, stages: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = head

    def forward_features(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def init_weights(module: nn.Module, scheme: str = "default") -> None:
    """Initialise conv and linear layers: ``default`` (PyTorch's), ``kaiming`` or ``xavier``."""
    if scheme == "default":
        return
    if scheme not in ("kaiming", "xavier"):
        raise ValueError(
            f"model.init={scheme!r} is not a weight initialisation; choose default, kaiming or xavier"
        )
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in", nonlinearity="relu"
                )
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def mlp_head(in_features: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """Global average pooling, flatten, dropout and a linear classifier."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, num_classes)
    )
