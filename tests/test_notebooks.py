"""Every notebook in notebooks/ runs top to bottom without error (nbclient, a fresh kernel).

The notebooks are documentation that executes: they use only the public API, read their data
from the repository, and state their checks as ``assert`` cells (the GLMM notebook compares
with lme4's published fit), so a change that breaks a worked example fails here. They are
committed without outputs; the second test keeps it that way (outputs in git make every diff
unreadable and go stale).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# the GLMM notebook takes ~20 s on an idle 2-core CPU, mostly compilation; the limit leaves
# room for a loaded CI machine (a cell that hangs still fails, after this many seconds)
CELL_TIMEOUT_S = 600


def _ids(paths):
    return [p.name for p in paths]


def test_notebooks_exist():
    # a glob that silently matches nothing would make the tests below vacuous
    assert NOTEBOOKS, f"no notebooks found in {ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_has_no_outputs(path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (
        f"{path.name}: code cells {dirty} carry outputs or execution counts; commit notebooks "
        "stripped (Jupyter: 'Clear All Outputs' then save, or `jupyter nbconvert "
        "--clear-output --inplace`)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed: no Python kernel to run notebooks")
    # the kernel is a fresh process started in notebooks/: it must import this checkout's
    # autohess (an installed copy, or none, otherwise)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    # raises CellExecutionError naming the cell and the traceback on the first failure
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # every figure a cell draws reaches the output (a silently empty plot cell would pass otherwise)
    n_plots = sum("plt.subplots" in c.source for c in nb.cells if c.cell_type == "code")
    n_images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert n_images >= n_plots, f"{path.name}: {n_plots} cells draw figures but only {n_images} images came out"
