"""The app: one exported model behind a web page and a JSON API, ``cnnlab-app [MODEL] [options]``.

Routes: ``GET /`` the page; ``GET /health``; ``GET /model`` the model's contract (with its format, file and
the upload limits); ``POST /predict`` an image as the multipart field ``file`` (options ``top_k`` for
classifiers, ``threshold`` for anomaly and detection models, as query or form fields) -> the task's record,
its picture as a data URL, the image's size (and the size it was reduced to) and the seconds it took.
A refusal is JSON ``{"detail": "..."}`` with the status: 400 an empty or truncated file, 413 a file or image
over the limits, 415 a file that is no image, 422 a bad option or no file. MODEL defaults to the best
export under ``outputs/`` (``find_best_export``).

Imports the serving code alone: no Lightning, no Hydra, no training code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from PIL import UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from cnnlab.data.io import ImageReadError, ImageTooLargeError, decode_image, to_unit_range
from cnnlab.errors import CnnlabError
from cnnlab.serving import draw, formats, runtime

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
#: room for the multipart envelope (boundary, part headers, the option fields) around the file itself
ENVELOPE_BYTES = 64 * 1024
#: the tasks that take each option
OPTION_TASKS = {"top_k": ("classification",), "threshold": ("anomaly", "detection")}
READABLE = "a PNG, JPEG, BMP, TIFF or WebP image"


def too_large(max_bytes: int, size: int | None = None) -> str:
    """Why an upload over ``max_bytes`` (of ``size`` bytes, when known) is refused."""
    said = "" if size is None else f" ({size / 1e6:.1f} MB)"
    return (
        f"the upload{said} is larger than the {max_bytes / 1e6:g} MB this server takes: send a smaller "
        f"file (or start the app with a larger --max-mb)"
    )


class BodyLimit:
    """Answers 413 to a request body over ``max_bytes``: at once from its Content-Length, or as soon as the
    bytes received pass the limit, so that an upload is never read (nor spooled to disk) unbounded."""

    def __init__(self, app: ASGIApp, max_bytes: int, file_bytes: int) -> None:
        self.app, self.max_bytes, self.file_bytes = app, max_bytes, file_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            refusal = JSONResponse({"detail": too_large(self.file_bytes, int(declared))}, status_code=413)
            await refusal(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # a chunked body, or one longer than it said
                    raise HTTPException(413, too_large(self.file_bytes))
            return message

        await self.app(scope, counted, send)


def create_app(
    model: runtime.Model, max_bytes: int = 20_000_000, max_pixels: int = 40_000_000, max_side: int = 1024
) -> FastAPI:
    """The app serving ``model`` (loaded by the caller): the page, /health, /model and /predict."""
    app = FastAPI(title="cnnlab", summary=f"a {model.contract['task']} model ({model.format})")
    app.add_middleware(BodyLimit, max_bytes=max_bytes + ENVELOPE_BYTES, file_bytes=max_bytes)
    app.state.model = model
    task = str(model.contract["task"])
    channels = 1 if model.in_channels == 1 else 3
    # one prediction at a time: requests decode, scale and draw side by side, the model is called in turn
    lock = threading.Lock()
    described = {
        **model.contract,
        "format": model.format,
        "file": str(model.path),
        "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels, "max_side": max_side},
    }

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        fields = {str(e["loc"][-1]) for e in err.errors() if e.get("loc")}
        if "file" in fields:
            detail = (
                f"no image in the request: send {READABLE} as the multipart form field `file` "
                f"(curl -F file=@image.png {request.url})"
            )
        else:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return JSONResponse({"detail": detail}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health")
    def health() -> dict[str, Any]:
        """The server answers, and which model it serves."""
        return {"status": "ok", "task": task, "format": model.format}

    @app.get("/model")
    def contract() -> dict[str, Any]:
        """The model's contract (task, class names, channels, sizes, outputs), its format, file and limits."""
        return described

    @app.post("/predict")
    def predict(
        request: Request,
        file: Annotated[UploadFile, File(description=READABLE)],
        top_k: Annotated[str | None, Form()] = None,
        threshold: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        """The model's record for one image, its picture (a PNG data URL) and the image's size."""
        query = request.query_params
        options = parse_options(
            model,
            top_k if top_k is not None else query.get("top_k"),
            threshold if threshold is not None else query.get("threshold"),
        )
        name = file.filename or "the upload"
        data = file.file.read(max_bytes + 1)  # the envelope's margin lets a file pass the body limit a little
        if len(data) > max_bytes:
            raise HTTPException(413, too_large(max_bytes, file.size))
        image = read_upload(data, channels, name, max_pixels)
        height, width = image.shape[-2:]
        image, scaled_to = fit(image, max_side)
        start = time.perf_counter()
        with lock:
            record = runtime.predict(model, [image], **options)[0]
        picture = draw.data_url(model.serving.picture(record, image))
        return JSONResponse(
            {
                "record": record,
                "picture": picture,
                "image": {"width": int(width), "height": int(height), "scaled_to": scaled_to},
                "seconds": round(time.perf_counter() - start, 4),
            }
        )

    return app


def parse_options(model: runtime.Model, top_k: str | None, threshold: str | None) -> dict[str, Any]:
    """The prediction options given as text, checked against the model's task (422 when wrong)."""
    task = str(model.contract["task"])
    options: dict[str, Any] = {}
    for key, text in (("top_k", top_k), ("threshold", threshold)):
        if text is None or text.strip() == "":
            continue
        if task not in OPTION_TASKS[key]:
            takers = " and ".join(OPTION_TASKS[key])
            raise HTTPException(
                422, f"{key} applies to {takers} models, not to this {task} model: leave it out"
            )
        if key == "top_k":
            count = len(model.class_names)
            try:
                options[key] = int(text)
            except ValueError:
                options[key] = 0
            if not 1 <= options[key] <= count:
                raise HTTPException(422, f"top_k={text!r}: give a whole number of classes from 1 to {count}")
        else:
            try:
                options[key] = float(text)
            except ValueError:
                options[key] = math.nan
            if not math.isfinite(options[key]):
                raise HTTPException(422, f"threshold={text!r}: give a number")
    try:
        return runtime.options_for(model, options)
    except ValueError as err:  # the task's own range (a detection threshold outside [0, 1], say)
        raise HTTPException(422, str(err)) from None


def read_upload(data: bytes, channels: int, name: str, max_pixels: int) -> Tensor:
    """The uploaded bytes as an image tensor (C, H, W); 400, 413 or 415 with the reason when they are not."""
    try:
        return decode_image(data, channels, name=name, max_pixels=max_pixels)
    except ImageTooLargeError as err:
        raise HTTPException(413, f"{err}; send a smaller image") from None
    except ImageReadError as err:
        if isinstance(err.__cause__, UnidentifiedImageError):
            raise HTTPException(415, f"{err}; send {READABLE}") from None
        raise HTTPException(400, f"{err}; send the whole file again, or another image") from None


def fit(image: Tensor, max_side: int) -> tuple[Tensor, list[int] | None]:
    """The image reduced (antialiased) to ``max_side`` pixels on its longer side, and its new [width,
    height]; the image itself and None when it is no larger."""
    height, width = image.shape[-2:]
    if max(height, width) <= max_side:
        return image, None
    scale = max_side / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    # uint8 is resized as it is (torchvision has a kernel for it); other depths as floats in [0, 1]
    pixels = image if image.dtype == torch.uint8 else to_unit_range(image)
    return TF.resize(pixels, size, antialias=True), [size[1], size[0]]


# --- which model: the best export under outputs/ ---------------------------------------------------------


@dataclass(frozen=True)
class ExportedRun:
    """A run folder with an exported model, and the value of the metric it optimised."""

    folder: Path
    export: Path
    metric: str | None
    mode: str
    value: float | None
    written: float  # metrics.json's modification time: the newest wins ties

    def rank(self) -> tuple[bool, float, float]:
        """Sorts better runs higher: a value first, then a better one, then a newer one."""
        if self.value is None:
            return (False, 0.0, self.written)
        return (True, self.value if self.mode == "max" else -self.value, self.written)


def exported_runs(root: str | Path = "outputs") -> list[ExportedRun]:
    """Every run under ``root`` whose metrics.json names an export folder that holds a model."""
    found = []
    for metrics_file in sorted(Path(root).rglob("metrics.json")):
        try:
            metrics = json.loads(metrics_file.read_text())
            written = metrics_file.stat().st_mtime
        except (OSError, ValueError):  # a run still writing its file, or a foreign one
            continue
        if not isinstance(metrics, dict) or not metrics.get("export"):
            continue
        # the folder named, else the run's own export/ (a run folder moved since)
        candidates = [Path(str(metrics["export"])), metrics_file.parent / "export"]
        export = next((p for p in candidates if _holds_model(p)), None)
        if export is None:
            continue
        metric, mode = metrics.get("optimized_metric"), metrics.get("optimized_mode", "max")
        value = metrics.get(f"best/{metric}", metrics.get(metric)) if metric else None
        usable = isinstance(value, (int, float)) and math.isfinite(value) and mode in ("max", "min")
        found.append(
            ExportedRun(metrics_file.parent, export, metric, mode, float(value) if usable else None, written)
        )
    return found


def best_run(root: str | Path = "outputs") -> tuple[ExportedRun, int]:
    """The best exported run under ``root`` and how many runs it was compared with.

    Runs are compared by the metric the newest run optimised (val/acc and val/auroc are not comparable).
    """
    runs = exported_runs(root)
    if not runs:
        raise CnnlabError(
            f"no exported model under {Path(root)}/: train one with `make train`, or give MODEL=... "
            f"(a model.pt2, model.onnx or model.pt, or the export folder holding them)"
        )
    newest = max(runs, key=lambda run: run.written)
    peers = [run for run in runs if (run.metric, run.mode) == (newest.metric, newest.mode)]
    return max(peers, key=ExportedRun.rank), len(peers)


def find_best_export(root: str | Path = "outputs") -> Path:
    """The export folder of the best run under ``root``, by the metric each run optimised; ties: newest."""
    return best_run(root)[0].export


def _holds_model(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f"model{s}").is_file() for s in formats.SUFFIXES.values())


# --- the command line --------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """``cnnlab-app``'s arguments."""
    parse = argparse.ArgumentParser(
        prog="cnnlab-app", description="Serve an exported model in a web page and a JSON API."
    )
    parse.add_argument(
        "model",
        nargs="?",
        type=Path,
        help="a model.pt2, model.onnx or model.pt, or an export folder (default: the best under --root)",
    )
    parse.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every one)")
    parse.add_argument("--port", type=int, default=8000)
    parse.add_argument("--root", type=Path, default=Path("outputs"), help="where to look for the best export")
    parse.add_argument("--max-mb", type=float, default=20.0, help="largest upload, in MB")
    parse.add_argument("--max-megapixels", type=float, default=40.0, help="largest image, in megapixels")
    parse.add_argument(
        "--max-side", type=int, default=1024, help="larger images are reduced to this longer side, in pixels"
    )
    return parse


def main(argv: list[str] | None = None) -> None:
    """Load the model once, say what is served where, and serve it until stopped."""
    parse = parser()
    args = parse.parse_args(argv)
    if min(args.max_mb, args.max_megapixels, args.max_side) <= 0:
        parse.error("--max-mb, --max-megapixels and --max-side take positive values")
    try:
        if args.model is None:
            run, compared = best_run(args.root)
            path = run.export
            value = "no value" if run.value is None else f"{run.value:.4g}"
            print(f"best of {compared} exported run(s) under {args.root}/ by {run.metric} ({value}):")
            print(f"  {run.export}")
        else:
            path = args.model
        start = time.perf_counter()
        model = runtime.load(path)
        loaded = time.perf_counter() - start
    except CnnlabError as err:
        print(f"cnnlab-app: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(model, int(args.max_mb * 1e6), int(args.max_megapixels * 1e6), args.max_side)
    print(
        f"serving {model.path} ({model.contract['task']}, {model.format}) at http://{args.host}:{args.port}"
    )
    print(f"model loaded in {loaded:.2f} s; Ctrl+C stops the server", flush=True)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
