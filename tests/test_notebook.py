"""examples/quick_start.ipynb executed in a Jupyter kernel (nbclient), on 1 starter pair with the real tiny.en
weights, its outputs checked: the README's quick start from Python, a notebook progress bar, none of Lightning's
lines."""

import os
from pathlib import Path

import pytest

from wpatch.rows import ROW_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING_LINES = ("GPU available", "TPU available", "LOCAL_RANK", "Tip:", "💡", "Predicting DataLoader")


@pytest.mark.real_weights
def test_quick_start_notebook_runs_and_says_what_it_should(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the notebook test needs pip install 'wpatch[test]'")
    from nbclient import NotebookClient

    monkeypatch.setenv("WPATCH_LIMIT", "1")
    monkeypatch.setenv("WPATCH_RUNS", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(ROOT / "examples/quick_start.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]

    def text(cell) -> str:
        return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)

    everything = "".join(text(cell) for cell in code)
    assert f"rows: (32, {len(ROW_COLUMNS)})" in text(
        code[0]
    )  # 1 pair x 2 directions x 16 layer pairs, the default settings
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in code[0].outputs), (
        "a notebook progress bar"
    )
    assert not any(line in everything for line in LIGHTNING_LINES), everything
    assert "transcript" in text(code[1]) and "score: diagonal" in text(code[2])
    assert any("image/png" in o.get("data", {}) for o in code[3].outputs), "the score matrix, drawn"
    assert "score_diff" in text(code[4])
    assert text(code[5]).strip() == str(tmp_path / "a_subset/report.html")
    assert "patched '" in text(code[6])
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
