"""Every notebook runs top to bottom on the shipped data."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 5


def test_notebooks_are_up_to_date():
    import sys

    sys.path.insert(0, str(NOTEBOOKS[0].parent))
    from build_notebooks import chinchilla_walkthrough

    on_disk = nbformat.read(NOTEBOOKS[0], as_version=4)
    assert [c.source for c in on_disk.cells] == [c.source for c in chinchilla_walkthrough().cells]
