"""The file formats of an exported model: how each is written, and how each is loaded into a callable.

- ``pt2``: ``torch.export``'s program (``torch.export.save``), batch, height and width dynamic where the graph
  allows; loaded with ``torch.export.load``.
- ``onnx``: the dynamo ONNX exporter into one file (weights inside), run by onnxruntime.
- ``torchscript``: ``torch.jit.script``, while PyTorch ships it (deprecated in favour of torch.export).

Every file carries the model's contract (``model.json``: preprocessing, classes, outputs, input) inside it:
the ``.pt2`` and ``.pt`` as an extra file, the ``.onnx`` as metadata. A loader returns a ``Runner``: a
callable from a float batch (N, C, H, W) in [0, 1] to the graph's output tensors, and the input sizes its
graph fixed (None where dynamic). Writing and loading need no cnnlab training code; loading an ``.onnx``
needs onnxruntime alone, not torch.onnx.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMATS = ("pt2", "onnx", "torchscript")
SUFFIXES = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}
#: the name of the contract inside a .pt2 or .pt file and in an .onnx file's metadata
CONTRACT = "model.json"
INPUT_NAME = "images"


@dataclass
class Runner:
    """A loaded graph: ``run(batch) -> outputs``; ``shape`` is (N, C, H, W) with None for a dynamic size."""

    run: Callable[[Tensor], tuple[Tensor, ...]]
    shape: list[int | None]
    contract: dict[str, Any]


def format_of(path: Path) -> str | None:
    """The format a file's suffix names, or None."""
    return next((fmt for fmt, suffix in SUFFIXES.items() if path.suffix == suffix), None)


# --- writing -------------------------------------------------------------------------------------------


def dynamic_shapes(dynamic: bool) -> dict[str, dict[int, Any]] | None:
    """Batch, height and width left to torch.export to keep open or fix (never an error), or all fixed."""
    auto = torch.export.Dim.AUTO
    return {INPUT_NAME: {0: auto, 2: auto, 3: auto}} if dynamic else None


def write(
    fmt: str,
    module: nn.Module,
    example: Tensor,
    path: Path,
    contract: dict[str, Any],
    dynamic: bool,
    programs: dict[str, Any] | None = None,
) -> None:
    """Write ``module`` (its forward takes ``images``) in ``fmt`` to ``path``, whole or not at all.

    ``programs`` keeps the ``torch.export`` program between calls: the ``.pt2`` and the ONNX exporter then
    trace the module once (the ONNX exporter takes the program as it is).
    """
    partial = path.with_name(path.name + ".partial")
    text = json.dumps(contract, indent=2)
    programs = {} if programs is None else programs
    with _quiet():
        if fmt in ("pt2", "onnx") and "program" not in programs:
            programs["program"] = torch.export.export(
                module, (example,), dynamic_shapes=dynamic_shapes(dynamic), strict=False
            )
        if fmt == "pt2":
            torch.export.save(programs["program"], partial, extra_files={CONTRACT: text})
        elif fmt == "onnx":
            onnx_program = torch.onnx.export(
                programs["program"],
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(module.outputs),
                external_data=False,
                verbose=False,
            )
            onnx_program.model.metadata_props[CONTRACT] = text
            onnx_program.save(str(partial), external_data=False)
        elif fmt == "torchscript":
            torch.jit.script(module).save(str(partial), _extra_files={CONTRACT: text})
        else:
            raise ValueError(f"export format {fmt!r}: choose from {', '.join(FORMATS)}")
    partial.replace(path)  # a reader never sees half a model


#: loggers of the exporters, which report every pass they run (and a failed export's whole graph)
EXPORTER_LOGGERS = (
    "torch._dynamo",
    "torch._export",
    "torch.export",
    "torch.fx",
    "torch.onnx",
    "onnx_ir",
    "onnxscript",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # the exporters report their progress and TorchScript its deprecation on every call; what matters here
    # is whether the file is written and what the verification measures
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


# --- loading -------------------------------------------------------------------------------------------


def load(path: Path) -> Runner:
    """The graph in ``path`` (its format by suffix) on the CPU, with the contract it carries."""
    fmt = format_of(path)
    if fmt == "pt2":
        return _load_pt2(path)
    if fmt == "onnx":
        return _load_onnx(path)
    if fmt == "torchscript":
        return _load_torchscript(path)
    raise ValueError(f"{path}: not an exported model's suffix; cnnlab writes {', '.join(SUFFIXES.values())}")


def _load_pt2(path: Path) -> Runner:
    import torchvision  # noqa: F401  (registers the operators, e.g. nms, that detectors' graphs call)

    files = {CONTRACT: ""}
    with _quiet():
        program = torch.export.load(path, extra_files=files)
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == INPUT_NAME)
    shape = [d if isinstance(d, int) else None for d in placeholder.meta["val"].shape]
    module = program.module()

    def run(batch: Tensor) -> tuple[Tensor, ...]:
        with torch.inference_mode():
            return tuple(module(batch))

    return Runner(run, shape, json.loads(files[CONTRACT] or "{}"))


def _load_onnx(path: Path) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings about unused initialisers are noise
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    shape = [d if isinstance(d, int) else None for d in given.shape]
    contract = json.loads(session.get_modelmeta().custom_metadata_map.get(CONTRACT, "{}"))

    def run(batch: Tensor) -> tuple[Tensor, ...]:
        outputs = session.run(None, {given.name: batch.detach().cpu().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)

    return Runner(run, shape, contract)


def _load_torchscript(path: Path) -> Runner:
    import torchvision  # noqa: F401  (registers the operators, e.g. nms, that detectors' graphs call)

    files = {CONTRACT: ""}
    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=files).eval()

    def run(batch: Tensor) -> tuple[Tensor, ...]:
        with torch.inference_mode():
            return tuple(module(batch))

    contract = json.loads(files[CONTRACT] or "{}")
    # TorchScript records no sizes: every one is open but the channels the network was built for
    return Runner(run, [None, contract.get("in_channels"), None, None], contract)
