"""The contract every classification network keeps: ordered backbone ``stages``, then a ``head``.

``forward_features`` runs the stages, ``forward_head`` the head. Freeze depth, per-stage learning rates and
transfer from a checkpoint are generic code over ``stages`` (see ``cnnlab.finetune``): ``freeze=k`` means the
first k stages for every architecture.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class Classifier(nn.Module):
    """A backbone of ordered stages (input to head) followed by a classification head."""

    #: the kind of task this network serves; checked against the datamodule's before a run starts
    task: ClassVar[str] = "classification"

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
