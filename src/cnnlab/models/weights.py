"""Pretrained weights for ``Classifier`` networks: torchvision's ImageNet weights, or a backbone of a run.

``model.weights`` takes ``null`` (train from scratch), a torchvision weights name (``DEFAULT``,
``IMAGENET1K_V1``, ...) read from the torch hub cache and downloaded into it when online, or the path of a
cnnlab checkpoint whose backbone stages are transferred by name and shape (never its head). Every network then
carries in ``net.preprocessing`` the input normalisation its weights expect (None from scratch)::

    {"mean": [float] * in_channels, "std": [float] * in_channels, "image_size": int, "resize_size": int}
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

from cnnlab.checkpoint_io import load_plain
from cnnlab.errors import CheckpointError, CnnlabError

log = logging.getLogger(__name__)

#: how long a download may wait on the network before it counts as offline
DOWNLOAD_TIMEOUT_S = 30.0


class WeightsNotFoundError(CnnlabError, FileNotFoundError):
    """Pretrained weights neither in the torch hub cache nor downloadable; the message says where they go."""


@dataclass
class WeightsReport:
    """What loading weights did: the tensors taken, those adapted, and those left out with the reason."""

    source: str
    #: the network's tensors that took the source's values
    loaded: list[str] = field(default_factory=list)
    #: loaded after adapting RGB filters to the network's input channels (the first convolution)
    adapted: list[str] = field(default_factory=list)
    #: tensor name -> why it was not loaded (source names; the network's names for tensors it lacks)
    left_out: dict[str, str] = field(default_factory=dict)
    preprocessing: dict[str, Any] | None = None

    def summary(self) -> str:
        """One paragraph for the log: counts, and the left-out tensors grouped by reason."""
        lines = [f"weights: loaded {len(self.loaded)} tensors from {self.source}"]
        if self.adapted:
            lines.append(f"  adapted to the input channels: {', '.join(self.adapted)}")
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.left_out.items():
            by_reason.setdefault(reason, []).append(name)
        for reason, names in by_reason.items():
            # by module (fc, not fc.weight and fc.bias): the reader wants layers, not tensors
            modules = dict.fromkeys(name.rpartition(".")[0] or name for name in names)
            lines.append(f"  left out {len(names)} tensors ({reason}): {', '.join(modules)}")
        return "\n".join(lines)


def load_weights(
    model: nn.Module,
    weights: str | Path | None,
    arch: str,
    torchvision_net: nn.Module,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> WeightsReport | None:
    """Load ``weights`` into ``model``, set ``preprocessing`` and ``torchvision_arch``; None: from scratch.

    ``torchvision_net`` is the torchvision network (``arch``) whose modules ``model`` is built from: its
    tensor names translate torchvision's state dict into the model's. ``normalisation`` replaces the mean and
    std of torchvision's weights where the network was trained on other inputs than they say.
    """
    model.preprocessing = None
    model.torchvision_arch = arch or None
    if weights is None or str(weights).strip().lower() in ("", "none", "null"):
        return None
    if _is_path(str(weights)):
        report = transfer_from_checkpoint(model, Path(weights))
    else:
        report = load_torchvision_weights(model, arch, str(weights), torchvision_net, normalisation)
    model.preprocessing = report.preprocessing
    log.info(report.summary())
    if not report.loaded:
        log.warning("weights: nothing from %s fits this network: another architecture?", report.source)
    return report


# --- torchvision's weights ----------------------------------------------------------------------------------


def torchvision_weights(arch: str, name: str) -> WeightsEnum:
    """torchvision's weights ``name``: ``DEFAULT``, ``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``."""
    enum = tvm.get_model_weights(arch)
    prefix, _, key = name.rpartition(".")
    if key in enum.__members__ and prefix in ("", enum.__name__):
        return enum[key]
    raise ValueError(
        f"model.weights={name!r} is not a torchvision weights name for {arch}; choose one of "
        f"{', '.join(enum.__members__)}, the path of a cnnlab checkpoint (.ckpt), or null (from scratch)"
    )


def hub_file(weights: WeightsEnum) -> Path:
    """Where torch hub keeps ``weights``: ``<torch.hub.get_dir()>/checkpoints/<file name of its URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def read_hub_state_dict(weights: WeightsEnum, arch: str) -> dict[str, Tensor]:
    """The state dict of ``weights`` from the torch hub cache, downloaded into it first when missing."""
    path = hub_file(weights)
    if not path.is_file():
        log.info("weights: downloading %s into %s", weights.url, path.parent)
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                return torch.hub.load_state_dict_from_url(
                    weights.url,
                    model_dir=str(path.parent),
                    map_location="cpu",
                    check_hash=True,
                    weights_only=True,
                )
        except (OSError, RuntimeError) as err:  # URLError, timeouts, refused connections, a bad hash
            raise WeightsNotFoundError(
                f"torchvision's {arch} weights {weights.name} are not in the torch hub cache and could not "
                f"be downloaded ({err}). Place the file {path.name} in the folder {path.parent} (download "
                f"it from {weights.url} on a machine with internet; TORCH_HOME moves the cache), or train "
                "from scratch with model.weights=null."
            ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated copy or another file under the expected name
        raise WeightsNotFoundError(
            f"{path} could not be read as torchvision's {arch} weights {weights.name} ({err}); delete it and "
            f"place a fresh copy of {weights.url} there"
        ) from err


def load_torchvision_weights(
    model: nn.Module,
    arch: str,
    name: str,
    torchvision_net: nn.Module,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> WeightsReport:
    """Load torchvision's weights ``name`` for ``arch`` into ``model``; report and preprocessing included."""
    weights = torchvision_weights(arch, name)
    state = read_hub_state_dict(weights, arch)
    # the stages hold torchvision's own modules, so a tensor's identity gives its name in the model
    ours = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    theirs = {n: ours.get(id(t)) for n, t in torchvision_net.state_dict(keep_vars=True).items()}
    source = {theirs.get(n) or n: t for n, t in state.items()}
    report = WeightsReport(f"torchvision's {arch} {weights.name} ({hub_file(weights)})")
    _copy_matching(model, source, report, missing_reason="not in the weights: kept at its initial value")
    report.preprocessing = weights_preprocessing(weights, input_channels(model) or 3, normalisation)
    return report


def weights_preprocessing(
    weights: WeightsEnum,
    channels: int,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """What ``weights`` expect of their input, each field only where its transforms say it.

    Classification weights give mean, std, crop and resize sizes; segmentation weights no crop; detection
    weights nothing at all (their networks normalise and resize inside).
    """
    transforms = weights.transforms()
    found: dict[str, Any] = {}
    mean, std = normalisation or (getattr(transforms, "mean", None), getattr(transforms, "std", None))
    if mean is not None and std is not None:
        found["mean"], found["std"] = fit_channels(mean, channels), fit_channels(std, channels)
    for key, attr in (("image_size", "crop_size"), ("resize_size", "resize_size")):
        value = getattr(transforms, attr, None)
        if value:
            found[key] = int(value[0])
    return found


# --- transfer from a cnnlab checkpoint ----------------------------------------------------------------------


def transfer_from_checkpoint(model: nn.Module, path: Path) -> WeightsReport:
    """Copy the backbone tensors (``net.stages.*``) of a cnnlab checkpoint whose name and shape match."""
    if not path.is_file():
        raise CheckpointError(
            f"model.weights={str(path)!r}: no such checkpoint. Give the path of a cnnlab checkpoint "
            "(<run>/checkpoints/*.ckpt), a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...), or null"
        )
    ckpt = load_plain(path, "checkpoint given as model.weights")
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not a cnnlab checkpoint (it has no state_dict). For a torchvision weights file, "
            f"place it in {Path(torch.hub.get_dir()) / 'checkpoints'} and set model.weights to its name"
        )
    report = WeightsReport(f"checkpoint {path}")
    source: dict[str, Tensor] = {}
    for key, tensor in ckpt["state_dict"].items():
        if key.startswith("net.stages."):
            source[key.removeprefix("net.")] = tensor
        elif key.startswith("net.head."):
            report.left_out[key] = "the head: sized for the checkpoint's classes, never transferred"
        else:
            report.left_out[key] = "not a backbone stage"
    _copy_matching(model, source, report, missing_reason="not in the checkpoint: kept at its initial value")
    contract = ckpt.get("cnnlab", {}).get("contract", {})
    channels = input_channels(model) or len(contract.get("mean") or [])
    if contract.get("mean") and contract.get("std"):
        report.preprocessing = {
            "mean": fit_channels(contract["mean"], channels),
            "std": fit_channels(contract["std"], channels),
            "image_size": contract.get("image_size"),
            "resize_size": contract.get("resize_size"),
        }
    return report


# --- shared helpers -----------------------------------------------------------------------------------------


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """First-conv filters for ``in_channels`` inputs: summed for grey, else repeated, rescaled (as timm)."""
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if in_channels == 1:
        # a grey image seen as R=G=B gets the same response from the summed filter
        return weight.sum(1, keepdim=True)
    repeats = math.ceil(in_channels / have)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (have / in_channels)


def fit_channels(values: Sequence[float], channels: int) -> list[float]:
    """Per-channel statistics for ``channels`` inputs: the average for grey, repeated for more."""
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(channels)]


def input_channels(model: nn.Module) -> int | None:
    """The number of channels the network's first convolution takes (None for a network without one)."""
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _copy_matching(
    model: nn.Module, source: dict[str, Tensor], report: WeightsReport, missing_reason: str
) -> None:
    """Load each source tensor whose name and shape the model has; record the rest and the stage gaps."""
    target = model.state_dict()
    matched: dict[str, Tensor] = {}
    for name, tensor in source.items():
        if name not in target:
            report.left_out[name] = "not in this network"
            continue
        want = target[name].shape
        if tensor.shape != want and _is_input_conv(tensor, target[name]):
            tensor = adapt_input_conv(tensor, want[1])
            report.adapted.append(name)
        if tensor.shape != want:
            report.left_out[name] = f"shape mismatch: {tuple(tensor.shape)} in the source, {tuple(want)} here"
            continue
        matched[name] = tensor
    model.load_state_dict(matched, strict=False)
    report.loaded = list(matched)
    for name in target:
        if name.startswith("stages.") and name not in source:
            report.left_out[name] = missing_reason


def _is_input_conv(tensor: Tensor, target: Tensor) -> bool:
    # conv filters that differ only in their input channels: the first convolution of another in_channels
    return (
        tensor.dim() == target.dim() == 4
        and tensor.shape[0] == target.shape[0]
        and tensor.shape[2:] == target.shape[2:]
        and max(tensor.shape[1], target.shape[1]) <= 4
    )


def _is_path(weights: str) -> bool:
    # torchvision names are identifiers (IMAGENET1K_V1); anything with a separator or a suffix is a file
    path = Path(weights)
    return os.sep in weights or "/" in weights or path.suffix in (".ckpt", ".pt", ".pth") or path.exists()


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # urllib waits forever on a silent network; a timeout turns that into an error we can explain
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_run_weights(model: nn.Module, weights: str | Path | None) -> WeightsReport | None:
    """Weights for a network torchvision has no weights for: null, or the path of a cnnlab checkpoint."""
    if (
        weights is not None
        and str(weights).strip().lower() not in ("", "none", "null")
        and not _is_path(str(weights))
    ):
        raise ValueError(
            f"model.weights={weights!r}: {type(model).__name__} has no torchvision weights; give the path of "
            "a cnnlab checkpoint (.ckpt) to transfer from, or null to train from scratch"
        )
    return load_weights(model, weights, arch="", torchvision_net=model)
