"""Any exported model as one callable: ``load`` a file of any format (or an export folder), then
``predict(model, images)`` gives one plain, JSON-ready record per image, the same from every format.

Needs torch and torchvision (and onnxruntime for ``.onnx``): no Lightning, no Hydra, no training code.
"""

from __future__ import annotations

import importlib
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import rgb_to_grayscale

from cnnlab.data.io import to_unit_range
from cnnlab.errors import CheckpointError
from cnnlab.serving import formats

TAKES = "the model.pt2, model.onnx or model.pt that cnnlab.export (or train.py) writes into <run>/export/"


class Model:
    """An exported model: ``model(batch)`` gives its outputs by name, ``model.contract`` what it needs."""

    def __init__(self, path: Path, runner: formats.Runner, contract: dict[str, Any]) -> None:
        self.path, self.format = path, formats.format_of(path)
        self.runner, self.contract = runner, contract
        self.serving = serving_of(contract, path)
        self.class_names: list[str] = list(contract["class_names"])
        self.in_channels = int(contract["in_channels"])

    def __call__(self, batch: Tensor) -> dict[str, Tensor]:
        """The graph's outputs, by the contract's names, for a float batch (N, C, H, W) in [0, 1]."""
        fixed_batch, _, height, width = self.runner.shape
        if fixed_batch is not None and len(batch) != fixed_batch:
            raise ValueError(f"{self.path} takes batches of {fixed_batch} image(s); got {len(batch)}")
        given = (batch.shape[-2], batch.shape[-1])
        size = (height or given[0], width or given[1])
        if size != given:  # a graph that fixed its size: the input is made to fit, the outputs mapped back
            batch = F.interpolate(
                batch, size=list(size), mode="bilinear", align_corners=False, antialias=True
            )
        outputs = dict(
            zip(self.contract["outputs"], self.runner.run(batch.float().contiguous()), strict=True)
        )
        rescale = getattr(self.serving, "rescale", None)
        return rescale(outputs, given, size) if size != given and rescale is not None else outputs

    def __repr__(self) -> str:
        return f"Model({self.path}, format={self.format}, task={self.contract.get('task')})"


def serving_of(contract: dict[str, Any], path: Path | None = None) -> ModuleType:
    """The serving module that turns this model's outputs into records (cnnlab's, or a task's own)."""
    name = str(contract.get("serving", ""))
    where = f"{path} " if path is not None else "this file "
    if not name or "outputs" not in contract:
        raise CheckpointError(
            f"{where}was not exported by this version of cnnlab (its contract names no serving module or no "
            f"outputs); predict takes {TAKES}"
        )
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise CheckpointError(
            f"{where}names the serving module {name}, which cannot be imported ({err})"
        ) from None
    if not hasattr(module, "records"):
        raise CheckpointError(f"{where}names {name} as its serving module, which has no records()")
    return module


def load(path: str | Path) -> Model:
    """The exported model in ``path``: a ``.pt2``, ``.onnx`` or ``.pt`` file, or an export folder (its
    first verified format, in the order pt2, onnx, torchscript)."""
    path = Path(path)
    if path.is_dir():
        path = preferred_file(path)
    if not path.is_file():
        raise CheckpointError(f"exported model {path} does not exist; predict takes {TAKES}")
    if path.suffix == ".ckpt" or _is_checkpoint(path):
        raise CheckpointError(
            f"{path} is a training checkpoint, not an exported model: export it first with "
            f"`python -m cnnlab.export {path}` and give predict one of the files it writes"
        )
    if formats.format_of(path) is None:
        raise CheckpointError(
            f"{path} is not an exported model (its suffix is not .pt2, .onnx or .pt); predict takes {TAKES}"
        )
    try:
        runner = formats.load(path)
    except Exception as err:  # each runtime fails in its own way on a foreign or truncated file
        raise CheckpointError(
            f"{path} is not an exported model: it is truncated (an interrupted copy?) or another kind of "
            f"file ({type(err).__name__}); predict takes {TAKES}"
        ) from None
    contract = runner.contract or _contract_beside(path)
    return Model(path, runner, contract)


def preferred_file(folder: Path) -> Path:
    """The model file of an export folder to use: the first format that was written and verified."""
    described = _contract_beside(folder / "model.json")
    for fmt in formats.FORMATS:
        candidate = folder / f"model{formats.SUFFIXES[fmt]}"
        info = described.get("formats", {}).get(fmt, {})
        if candidate.is_file() and not info.get("error"):
            return candidate
    raise CheckpointError(f"{folder} holds no exported model (model.pt2, model.onnx or model.pt)")


def _contract_beside(path: Path) -> dict[str, Any]:
    described = path if path.name == "model.json" else path.with_name("model.json")
    try:
        return json.loads(described.read_text())
    except (OSError, ValueError):
        return {}


def _is_checkpoint(path: Path) -> bool:
    # a Lightning checkpoint is a zip of pickled tensors with no code: TorchScript files hold code/
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    pickled = any(name.endswith("/data.pkl") for name in names)
    return pickled and not any("/code/" in name or "/models/" in name for name in names)


def as_batch(image: Tensor, channels: int) -> Tensor:
    """An image (C, H, W) of any dtype as the float batch (1, C, H, W) in [0, 1] a graph takes."""
    if image.dim() != 3:
        raise ValueError(f"an image is (C, H, W); got a tensor of shape {tuple(image.shape)}")
    if image.shape[0] != channels:
        if image.shape[0] == 1:
            image = image.expand(channels, -1, -1)
        elif channels == 1 and image.shape[0] == 3:
            image = rgb_to_grayscale(to_unit_range(image))  # ITU-R 601 weights, as Pillow's "L"
        else:
            raise ValueError(f"the model takes {channels}-channel images; got {image.shape[0]} channels")
    return to_unit_range(image)[None]


def options_for(model: Model, options: dict[str, Any]) -> dict[str, Any]:
    """The options, checked by the model's task (a detection threshold outside [0, 1], say)."""
    check = getattr(model.serving, "check_options", None)
    if check is not None:
        check(options)
    return options


def predict(model: Model, images: Iterable[Tensor], /, **options: Any) -> list[dict[str, Any]]:
    """One record per image (C, H, W; uint8, uint16 or float in [0, 1]): plain values, ready for JSON."""
    options = options_for(model, options)
    found: list[dict[str, Any]] = []
    for image in images:
        outputs = model(as_batch(image, model.in_channels))
        found += model.serving.records(outputs, model.contract, [tuple(image.shape[-2:])], options)
    return found
