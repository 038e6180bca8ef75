"""Pretrained weights for the model tests, written where torch hub keeps them (the tests run offline)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor
from torchvision import models as tvm

from cnnlab.models.weights import hub_file, torchvision_weights


def place_in_hub_cache(arch: str, name: str, **builder_kwargs: Any) -> dict[str, Tensor]:
    """Write torchvision's ``arch`` network's state dict where torch hub keeps the weights ``name``."""
    path = hub_file(torchvision_weights(arch, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    builder = tvm.get_model_builder(arch)
    if "weights_backbone" in inspect.signature(builder).parameters:
        builder_kwargs.setdefault("weights_backbone", None)  # builders default to ImageNet: a download
    torch.manual_seed(1)
    state = builder(weights=None, **builder_kwargs).state_dict()
    torch.save(state, path)
    return state
