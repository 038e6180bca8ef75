"""The notebook of scripts/notebooks/ runs end to end in a Jupyter kernel, as a user runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "scripts" / "notebooks" / "first_lesson.ipynb"


@pytest.mark.slow
def test_the_first_lesson_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    # a kernel of this interpreter, whatever kernels the machine has installed
    spec = tmp_path / "jupyter" / "kernels" / "cnnlab-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "cnnlab", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, kernel_name="cnnlab-test", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, where a cell fails

    def text(cell: dict) -> str:
        parts = [o.get("text", "") for o in cell.outputs] + [
            str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs
        ]
        return "".join(parts)

    fit_cell = next(c for c in notebook.cells if "cnnlab.fit(" in c.source)
    assert "epoch 3/3" in text(fit_cell)  # the epoch lines are shown in the notebook
    assert "status=completed" in text(fit_cell)
    predict_cell = notebook.cells[-1]
    assert "'probability'" in text(predict_cell)
    assert any("image/png" in o.get("data", {}) for o in predict_cell.outputs)
    assert list((tmp_path / "outputs" / "train" / "runs").glob("*/export/model.pt"))
