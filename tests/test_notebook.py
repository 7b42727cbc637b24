"""examples/quickstart.ipynb runs from top to bottom in a Jupyter kernel and shows what its words promise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def cell_text(cell) -> str:
    """What a code cell printed and the plain-text form of its results (progress bars on stderr left out)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def has_figure(cell) -> bool:
    return any(output.output_type in ("execute_result", "display_data") and "application/vnd.plotly.v1+json" in output.data
               for output in cell.get("outputs", []))


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_the_quickstart_runs_and_shows_paris_rome_paris(tmp_path, monkeypatch):
    # the kernel is this Python, with this checkout first on its path (not another installed copy of Locus)
    kernel = tmp_path / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps(
        {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("print(locus.__file__)"))
    NotebookClient(notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(ROOT)}}).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert cell_text(code[-1]).strip() == str(ROOT / "locus" / "__init__.py")
    assert all(output.output_type != "error" for cell in code for output in cell.outputs)
    predictions = [cell_text(cell) for cell in code if "locus.predict(lm, PROMPT)" in cell.source]
    assert [text.splitlines()[1].split("'")[1].strip() for text in predictions] == ["Paris", "Rome", "Paris"]
    trace = next(cell for cell in code if "locus.trace(" in cell.source)
    assert cell_text(trace).startswith("answer 'Paris'") and has_figure(trace)
    recommend = next(cell for cell in code if "recommend_layers" in cell.source)
    assert "R = [" in cell_text(recommend) and has_figure(recommend)
    generated = next(cell for cell in code if "locus.generate(" in cell.source)
    assert "Rome" in cell_text(generated).splitlines()[0]
