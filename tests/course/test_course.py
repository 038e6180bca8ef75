"""make course: the report read from run folders (fake ones here), a failed lesson, one cheap lesson run."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def course() -> ModuleType:
    """scripts/course.py as a module (by its path: this test folder is a package of the same name)."""
    spec = importlib.util.spec_from_file_location("course_script", ROOT / "scripts" / "course.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    sys.path.insert(0, str(ROOT / "scripts"))  # where it finds its report module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


def png(color: str, size: tuple[int, int] = (6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def lesson(out: Path, name: str, **record: object) -> Path:
    record = {"out": str(out), "commands": ["python train.py x=1"], **record}
    write(out / name / "lesson.json", json.dumps(record))
    return out / name


def embedded(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_report_reads_numbers_and_pictures_from_the_run_folders(
    course: ModuleType, tmp_path: Path
) -> None:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    folder = lesson(tmp_path, "lesson1", status="done", seconds=12.5)
    write(folder / "mlp" / "metrics.json", json.dumps({"test/acc": 0.91234, "test/f1": 0.9}))
    write(folder / "cnn" / "metrics.json", json.dumps({"test/acc": 0.98765, "epochs": 4}))
    weights = png("red")
    write(folder / "cnn" / "figures" / "weights_first_conv.png", weights)
    write(folder / "figures" / "filters_photo.png", png("blue"))
    with SummaryWriter(str(folder / "cnn" / "tensorboard")) as writer:
        writer.add_image("test/confusion_matrix", torch.zeros(3, 8, 8, dtype=torch.uint8), 0)

    html_path, md_path = course.write_report(tmp_path)
    page = html_path.read_text()
    assert "1. Lesson 1: a multi-layer perceptron" in page and "Improving" not in page
    assert "MLP 0.912, course CNN 0.988 (4 epochs)" in page  # from metrics.json, rounded for reading
    pictures = embedded(page)
    assert weights in pictures and len(pictures) == 3
    assert all(p.startswith(b"\x89PNG") for p in pictures)  # the TensorBoard picture too
    assert "CNN: confusion matrix" in page and "the CNN&#x27;s first-layer filters" in page
    assert f'make course ARGS="--only lesson1 --out {tmp_path}"'.replace('"', "&quot;") in page
    markdown = md_path.read_text()
    assert "| MLP (model=mlp) | 0.9123 | 0.9 |" in markdown
    linked = re.findall(r"\]\((figures/[^)]+)\)", markdown)
    assert len(linked) == 3 and all((tmp_path / p).is_file() for p in linked)


def test_a_failed_lesson_is_reported_with_its_error(course: ModuleType, tmp_path: Path) -> None:
    lesson(tmp_path, "lesson1", status="done", seconds=1.0)
    lesson(tmp_path, "autoencoders", status="failed", seconds=3.0, error="anomaly: cnnlab: the data is gone")
    html_path, md_path = course.write_report(tmp_path)
    page = html_path.read_text()
    assert page.index('id="lesson1"') < page.index('id="autoencoders"')  # the course's order
    assert '<td class="failed">failed</td>' in page
    assert "anomaly: cnnlab: the data is gone" in page
    assert "> anomaly: cnnlab: the data is gone" in md_path.read_text()


@pytest.mark.parametrize(
    ("console", "error"),
    [
        (
            "Seed set\n\ncnnlab: data.root is not set: give it\n(the run's log: x/train.log)\n",
            "cnnlab: data.root is not set: give it (the run's log: x/train.log)",
        ),
        (
            "[cnnlab] job 1 failed: bad lr\n[cnnlab] job 3 failed: worse\nError executing job\n",
            "job 1 failed: bad lr; job 3 failed: worse",
        ),
        (
            "Traceback (most recent call last):\n  File x\nZeroDivisionError: float division by zero\n",
            "ZeroDivisionError: float division by zero",
        ),
    ],
)
def test_the_error_of_a_failed_command_is_the_line_a_person_reads(
    course: ModuleType, console: str, error: str
) -> None:
    assert course.error_of(console) == error


def test_an_unknown_lesson_names_the_lessons(course: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        course.main(["--only", "lesson9"])
    assert stopped.value.code == 2
    assert "no such lesson; the lessons are lesson1, improving, architectures" in capsys.readouterr().err


def test_a_lesson_that_fails_is_reported_and_sets_the_exit_code(
    course: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert course.main(["--only", "serving", "--out", str(tmp_path)]) == 1  # nothing trained: no export
    console = capsys.readouterr().out
    assert "[1/1] serving FAILED" in console and "no exported model under" in console
    assert "1 failed (serving)" in console
    record = json.loads((tmp_path / "serving" / "lesson.json").read_text())
    assert record["status"] == "failed" and "no exported model" in (tmp_path / "index.html").read_text()


@pytest.mark.slow
def test_make_course_runs_one_lesson_end_to_end(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "course.py"), "--quick", "--only", "architectures"]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[1/1] architectures done in" in done.stdout
    page = (tmp_path / "index.html").read_text()
    assert "classifiers at 224 px" in page and "resnet18" in page
    assert (tmp_path / "architectures" / "models.csv").is_file() and (tmp_path / "report.md").is_file()
