"""Every notebook in notebooks/ runs top to bottom without error (nbclient, a fresh kernel).

The notebooks are documentation that executes: they use only the public API, read their data
from the repository, and state their checks as ``assert`` cells against named references
(closed forms, statsmodels, published values such as lme4's cbpp fit and Durbin-Koopman's Nile
variances, simulation with fixed seeds), so a change that breaks a worked example fails here. They are
committed without outputs; the second test keeps it that way (outputs in git make every diff
unreadable and go stale).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# each notebook takes 15-40 CPU-seconds on a 2-core CPU, mostly compilation (notebooks/README.md
# lists them); the limit leaves room for a loaded CI machine (a cell that hangs still fails,
# after this many seconds)
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


def _execute(nb, workdir: Path, monkeypatch):
    """Run ``nb`` in a fresh kernel started in ``workdir``, as Jupyter would from there."""
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed: no Python kernel to run notebooks")
    # the kernel is a fresh process started in notebooks/: it must import this checkout's
    # autohess (an installed copy, or none, otherwise)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    # raises CellExecutionError naming the cell and the traceback on the first failure
    client.execute()


def _draws(source: str) -> bool:
    """Whether a code cell draws a figure: with pyplot directly or through autohess's pictures
    (``ah.plot.*`` and the results' ``.plot()`` methods)."""
    return "plt.subplots" in source or "ah.plot." in source or ".plot(" in source


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
    nb = nbformat.read(path, as_version=4)
    _execute(nb, path.parent, monkeypatch)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # every figure a cell draws reaches the output (a silently empty plot cell would pass otherwise)
    n_plots = sum(_draws(c.source) for c in nb.cells if c.cell_type == "code")
    n_images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert n_images >= n_plots, f"{path.name}: {n_plots} cells draw figures but only {n_images} images came out"


@pytest.mark.slow
def test_a_failing_cell_fails_the_run(tmp_path, monkeypatch):
    """The runner above must not swallow errors: a notebook whose second cell raises stops
    there with nbclient's CellExecutionError naming the exception, and the cell after it never
    runs (a notebook's ``assert`` cells are its checks against references)."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import autohess as ah\nprint(ah.__file__)"),
        nbformat.v4.new_code_cell("assert 1 + 1 == 3, 'planted failure'"),
        nbformat.v4.new_code_cell("print('not reached')"),
    ])
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="planted failure"):
        _execute(nb, tmp_path, monkeypatch)
    # the kernel imported this checkout's autohess, not an installed copy
    assert str(ROOT / "autohess") in nb.cells[0].outputs[0]["text"]
    assert nb.cells[2].outputs == []
