"""The app's API (FastAPI's TestClient, on models trained and exported by train.py), its refusals, the choice
of the best export, and ``cnnlab-app`` started as a user starts it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cli.test_cli import QUIET, ROOT, run, write_digit_png
from PIL import Image

from cnnlab.app.server import create_app, find_best_export, main
from cnnlab.errors import CnnlabError
from cnnlab.serving import runtime

with warnings.catch_warnings():
    # Starlette 1.x asks for the httpx2 package and warns on httpx, which its TestClient still runs on
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

#: a short run of an autoencoder task: one epoch of two batches, one export format
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=1",
    "export.formats=[torchscript]",
]


def train(out: Path, *overrides: str) -> Path:
    """A run of train.py into ``out``; its export folder."""
    run(str(ROOT / "train.py"), f"hydra.run.dir={out}", *QUIET, *overrides)
    return out / "export"


@pytest.fixture(scope="module")
def client(classifier_export: Path) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.load(classifier_export))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def digit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded set's first image, a 0, as an RGB PNG of 24 x 30 pixels."""
    return write_digit_png(tmp_path_factory.mktemp("upload") / "zero.png", size=(24, 30), index=0)


def upload(client: TestClient, path: Path, **params: str) -> httpx.Response:
    return client.post("/predict", files={"file": (path.name, path.read_bytes())}, params=params)


def decoded(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def png_of(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A grey PNG of one colour written directly: 8000 x 6250 compresses to some 50 kB in no time.
    ``rows`` replaces the image data (a few bytes: a file whose header alone is right)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(bytes((width + 1) * height), 9) if rows is None else rows
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_health_says_which_model_is_served(client: TestClient) -> None:
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "task": "classification", "format": "pt2"}


def test_model_gives_the_contract_with_its_format_file_and_limits(
    client: TestClient, classifier_export: Path
) -> None:
    described = client.get("/model").json()
    contract = runtime.load(classifier_export).contract  # the one inside the file
    assert {key: described[key] for key in contract} == contract
    assert described["class_names"] == [str(i) for i in range(10)] and described["in_channels"] == 1
    assert described["format"] == "pt2" and described["file"] == str(classifier_export / "model.pt2")
    assert described["limits"] == {"max_bytes": 20_000_000, "max_pixels": 40_000_000, "max_side": 1024}


def test_the_page_is_served_with_its_elements(client: TestClient) -> None:
    answer = client.get("/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    for element in ('id="file"', 'id="drop"', 'id="result"', 'id="picture"', 'id="error"', 'id="model"'):
        assert element in answer.text
    assert "http://" not in answer.text and "https://" not in answer.text  # no CDN: it works offline


def test_predict_gives_the_digits_class_and_a_picture_of_the_uploads_size(
    client: TestClient, digit: Path
) -> None:
    answer = upload(client, digit)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    record = found["record"]
    assert record["task"] == "classification" and record["top"][0]["class"] == "0"
    assert len(record["top"]) == 5 and "cam" not in record  # the default simple_cnn has a hidden layer
    probabilities = [c["probability"] for c in record["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    picture = decoded(found["picture"])
    assert picture.format == "PNG" and picture.size == (24, 30)
    assert found["image"] == {"width": 24, "height": 30, "scaled_to": None}


def test_predict_takes_top_k_from_the_query_or_the_form(client: TestClient, digit: Path) -> None:
    assert len(upload(client, digit, top_k="2").json()["record"]["top"]) == 2
    answer = client.post("/predict", files={"file": ("d.png", digit.read_bytes())}, data={"top_k": "3"})
    assert len(answer.json()["record"]["top"]) == 3


def test_a_larger_image_is_reduced_before_prediction_and_the_answer_says_so(
    client: TestClient, tmp_path: Path
) -> None:
    large = write_digit_png(tmp_path / "large.png", size=(1600, 2000), index=0)
    found = upload(client, large).json()
    assert found["image"] == {"width": 1600, "height": 2000, "scaled_to": [819, 1024]}
    assert found["record"]["top"][0]["class"] == "0"
    assert decoded(found["picture"]).size == (819, 1024)


def bad_uploads(folder: Path) -> list[tuple[str, bytes, int, str]]:
    """(file name, contents, status, words of the message) of each kind of bad upload."""
    whole = write_digit_png(folder / "whole.png", size=(240, 300)).read_bytes()
    return [
        ("notes.txt", b"these are not the pixels you are looking for\n", 415, "notes.txt: not an image"),
        ("empty.png", b"", 400, "empty.png: the file is empty"),
        ("cut.png", whole[: len(whole) // 2], 400, "cut.png: unreadable image: truncated"),
        (
            "huge.png",
            png_of(8000, 6250),
            413,
            "huge.png: 8000 x 6250 px is 50.0 megapixels, more than the 40",
        ),
    ]


def test_bad_uploads_are_refused_with_the_reason_and_the_server_keeps_serving(
    client: TestClient, digit: Path, tmp_path: Path
) -> None:
    for name, contents, status, words in bad_uploads(tmp_path):
        answer = client.post("/predict", files={"file": (name, contents)})
        assert answer.status_code == status, (name, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and words in detail and "; send " in detail, detail
    assert upload(client, digit).json()["record"]["top"][0]["class"] == "0"


def test_a_huge_image_is_refused_from_its_header_before_anything_is_decoded(client: TestClient) -> None:
    # the header says 8000 x 6250 and the pixels are a few bytes: decoding would fail as truncated
    header_only = png_of(8000, 6250, rows=zlib.compress(b"\0" * 100))
    answer = client.post("/predict", files={"file": ("liar.png", header_only)})
    assert answer.status_code == 413 and "50.0 megapixels" in answer.json()["detail"]


def test_an_upload_over_the_byte_limit_is_refused_unread(classifier_export: Path, digit: Path) -> None:
    # 100 kB: the digit passes, 200 kB of noise does not, whether its length is declared or streamed
    app = create_app(runtime.load(classifier_export), max_bytes=100_000)
    noise = os.urandom(200_000)
    with TestClient(app) as small:
        declared = small.post("/predict", files={"file": ("noise.png", noise)})
        assert declared.status_code == 413
        assert "(0.2 MB) is larger than the 0.1 MB this server takes" in declared.json()["detail"]
        boundary = "cnnlab-test"
        body = (
            f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="noise.png"\r\n\r\n'
            + noise
            + f"\r\n--{boundary}--\r\n".encode()
        )
        chunks = (body[i : i + 16384] for i in range(0, len(body), 16384))
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        streamed = small.post("/predict", content=chunks, headers=headers)
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and "larger than the 0.1 MB" in streamed.json()["detail"]
        # a file between the limit and the envelope's margin is refused by its own size
        just_over = small.post("/predict", files={"file": ("noise.png", noise[:120_000])})
        assert just_over.status_code == 413 and "(0.1 MB) is larger" in just_over.json()["detail"]
        assert upload(small, digit).status_code == 200


def test_a_missing_file_and_bad_options_are_refused_with_the_reason(client: TestClient, digit: Path) -> None:
    missing = client.post("/predict", data={"top_k": "3"})
    assert missing.status_code == 422 and "multipart form field `file`" in missing.json()["detail"]
    for params, words in (
        ({"top_k": "many"}, "top_k='many': give a whole number of classes from 1 to 10"),
        ({"top_k": "0"}, "from 1 to 10"),
        (
            {"threshold": "0.5"},
            "threshold applies to anomaly and detection models, not to this classification",
        ),
    ):
        answer = upload(client, digit, **params)
        assert answer.status_code == 422 and words in answer.json()["detail"], answer.text


def test_predictions_are_answered_side_by_side(client: TestClient, digit: Path) -> None:
    contents = digit.read_bytes()

    def one(n: int) -> tuple[int, str]:
        answer = client.post("/predict", files={"file": (f"d{n}.png", contents)})
        return answer.status_code, answer.json()["record"]["top"][0]["class"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(32)))
    assert answers == [(200, "0")] * 32


@pytest.fixture(scope="module")
def anomaly_client(anomaly_run: Path) -> Iterator[TestClient]:
    """The app on the shared anomaly run of tests/conftest.py (zeros normal)."""
    with TestClient(create_app(runtime.load(anomaly_run / "export"))) as test_client:
        yield test_client


def test_an_anomaly_model_gives_its_score_decision_and_map(anomaly_client: TestClient, digit: Path) -> None:
    assert anomaly_client.get("/health").json()["task"] == "anomaly"
    own = anomaly_client.get("/model").json()["threshold"]
    found = upload(anomaly_client, digit).json()
    record = found["record"]
    assert record["task"] == "anomaly" and record["score"] >= 0 and isinstance(record["anomalous"], bool)
    assert record["threshold"] == own and record["threshold_source"] == "chosen on validation"
    assert record["anomalous"] == (record["score"] >= own)
    assert decoded(found["picture"]).size == (24, 30)  # the heat map over the upload
    given = upload(anomaly_client, digit, threshold="0").json()["record"]
    assert given["anomalous"] and given["threshold"] == 0 and given["threshold_source"] == "given"
    form = anomaly_client.post(
        "/predict", files={"file": ("d.png", digit.read_bytes())}, data={"threshold": "1e9"}
    )
    assert form.json()["record"]["anomalous"] is False


def test_an_anomaly_model_refuses_a_threshold_with_the_models_reason(
    anomaly_client: TestClient, digit: Path
) -> None:
    negative = upload(anomaly_client, digit, threshold="-1")
    assert negative.status_code == 422
    assert "anomaly scores are squared errors, give a value >= 0" in negative.json()["detail"]
    for text in ("high", "nan", "inf"):
        answer = upload(anomaly_client, digit, threshold=text)
        assert answer.status_code == 422 and f"threshold={text!r}: give a number" in answer.json()["detail"]
    assert upload(anomaly_client, digit, top_k="3").status_code == 422


@pytest.mark.slow
def test_an_autoencoder_gives_its_error_psnr_and_reconstruction(
    tmp_path_factory: pytest.TempPathFactory, digit: Path
) -> None:
    export = train(tmp_path_factory.mktemp("app") / "denoise", "experiment=ae_denoise_digits", *SHORT)
    with TestClient(create_app(runtime.load(export))) as denoiser:
        found = upload(denoiser, digit).json()
    record = found["record"]
    assert record["task"] == "autoencoder" and record["mode"] == "denoise"
    assert record["error"] > 0 and record["psnr"] > 0
    size = runtime.load(export).contract["image_size"]
    assert decoded(found["picture"]).size == (size, size)  # the reconstruction, at the network's size


# --- which model: the best export under outputs/ -----------------------------------------------------------


def fake_run(root: Path, name: str, age_s: float, **metrics: object) -> Path:
    """A run folder with metrics.json (written ``age_s`` seconds ago) and an export folder holding a model."""
    folder = root / name
    (folder / "export").mkdir(parents=True)
    (folder / "export" / "model.pt").write_bytes(b"a model")
    written = folder / "metrics.json"
    written.write_text(json.dumps({"export": str(folder / "export"), **metrics}))
    os.utime(written, (time.time() - age_s, time.time() - age_s))
    return folder / "export"


def test_the_best_export_is_the_best_value_of_the_optimised_metric(tmp_path: Path) -> None:
    acc = {"optimized_metric": "val/acc", "optimized_mode": "max"}
    better = fake_run(tmp_path, "a", 60, **acc, **{"best/val/acc": 0.9})
    fake_run(tmp_path, "b", 10, **acc, **{"best/val/acc": 0.8})
    last_epoch = fake_run(tmp_path, "c", 20, **acc, **{"val/acc": 0.95})  # no best/: the value itself
    assert find_best_export(tmp_path) == last_epoch
    # where both are written, best/<metric> (the checkpoint exported) counts, not the last epoch's value
    metrics = tmp_path / "c" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "best/val/acc": 0.7}))
    assert find_best_export(tmp_path) == better


def test_the_best_export_respects_min_mode_and_prefers_the_newest_of_equals(tmp_path: Path) -> None:
    loss = {"optimized_metric": "val/loss", "optimized_mode": "min"}
    fake_run(tmp_path, "high", 30, **loss, **{"best/val/loss": 0.3})
    fake_run(tmp_path, "low_old", 20, **loss, **{"best/val/loss": 0.2})
    low_new = fake_run(tmp_path, "low_new", 10, **loss, **{"best/val/loss": 0.2})
    assert find_best_export(tmp_path) == low_new


def test_the_best_export_skips_runs_without_a_model_and_compares_the_newest_runs_metric(
    tmp_path: Path,
) -> None:
    acc = {"optimized_metric": "val/acc", "optimized_mode": "max"}
    good = fake_run(tmp_path / "train", "good", 50, **acc, **{"best/val/acc": 0.9})
    gone = fake_run(tmp_path / "train", "gone", 40, **acc, **{"best/val/acc": 0.99})
    (gone / "model.pt").unlink()
    evaluated = tmp_path / "eval" / "metrics.json"  # an evaluation's metrics: no export
    evaluated.parent.mkdir()
    evaluated.write_text(json.dumps({"test/acc": 1.0}))
    (tmp_path / "half" / "metrics.json").parent.mkdir()
    (tmp_path / "half" / "metrics.json").write_text('{"export": ')  # a run still writing
    assert find_best_export(tmp_path) == good
    # an anomaly run trained since: val/auroc is not comparable with val/acc, the newest run's metric decides
    auroc = {"optimized_metric": "val/auroc", "optimized_mode": "max"}
    anomaly = fake_run(tmp_path / "train", "anomaly", 5, **auroc, **{"best/val/auroc": 0.7})
    assert find_best_export(tmp_path) == anomaly


def test_no_export_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(
        CnnlabError, match=r"no exported model under .*: train one with `make train`, or give MODEL="
    ):
        find_best_export(tmp_path / "outputs")
    for argv, words in (
        (["--root", str(tmp_path)], "no exported model under"),
        ([str(tmp_path / "missing.pt2")], "missing.pt2 does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_code:
            main(argv)
        assert exit_code.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("cnnlab-app: ") and words in error and error.count("\n") == 1


def test_the_app_imports_no_training_code() -> None:
    code = (
        "import cnnlab.app.server, sys; print([m for m in ('lightning', 'hydra', 'cnnlab.train',"
        " 'cnnlab.tasks', 'cnnlab.checkpoints') if m in sys.modules])"
    )
    assert run("-c", code).stdout.strip() == "[]"


# --- cnnlab-app as a user starts it ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(*args: str, timeout: float = 120) -> Iterator[tuple[str, list[str]]]:
    """``python -m cnnlab.app.server ARGS --port <free>`` until the block ends: its address once /health
    answers, and the lines it has printed (still growing)."""
    port = free_port()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "cnnlab.app.server", *args, "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                reader.join(5)
                pytest.fail(f"{command} exited {server.returncode}:\n{''.join(lines)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{command} did not answer /health within {timeout} s:\n{''.join(lines)}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, lines
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_command_line_says_what_it_serves_and_answers_requests_side_by_side(
    classifier_export: Path, digit: Path, tmp_path: Path
) -> None:
    # the default: the best export under --root (two runs, the better one a link to the real export)
    (tmp_path / "better").mkdir()
    (tmp_path / "better" / "export").symlink_to(classifier_export)
    for name, value in (("better", 0.9), ("worse", 0.5)):
        metrics = {
            "export": str(tmp_path / name / "export"),
            "optimized_metric": "val/acc",
            "best/val/acc": value,
        }
        if name == "worse":
            fake_run(tmp_path, name, 0, **metrics)
        else:
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    start = time.perf_counter()
    with serving("--root", str(tmp_path)) as (url, lines):
        started = time.perf_counter() - start
        said = "".join(lines)
        best = tmp_path / "better" / "export"
        assert f"best of 2 exported run(s) under {tmp_path}/ by val/acc (0.9):\n  {best}\n" in said
        serving_line = re.search(r"^serving (.+) \((\w+), (\w+)\) at (http://\S+)$", said, re.MULTILINE)
        assert serving_line is not None, said
        assert serving_line.groups() == (
            str(tmp_path / "better" / "export" / "model.pt2"),
            "classification",
            "pt2",
            url,
        )
        assert re.search(r"^model loaded in \d+\.\d\d s; Ctrl\+C stops the server$", said, re.MULTILINE), said
        assert httpx.get(f"{url}/health").json() == {
            "status": "ok",
            "task": "classification",
            "format": "pt2",
        }
        contents = digit.read_bytes()

        def one(n: int) -> tuple[int, str]:
            answer = httpx.post(f"{url}/predict", files={"file": (f"d{n}.png", contents)}, timeout=60)
            return answer.status_code, answer.json()["record"]["top"][0]["class"]

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(16))) == [(200, "0")] * 16
    print(f"cnnlab-app answered /health {started:.1f} s after its start")
