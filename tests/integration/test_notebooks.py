"""Every notebook runs, top to bottom, on the embedded toy model or the world: each jupytext percent file
(notebooks/*.py) is converted to a notebook and executed with nbclient on the venv's own ``python3`` kernel
(ipykernel installed in the venv; nothing registered globally) in a scratch working folder. Any cell error fails
the test. The notebooks of one test process share one kernel, its namespace and figures cleared before each
(``%reset -f``): what a notebook uses it must define itself, and torch, diffusers and transformers are imported once
(~5 s a notebook on 2 cores)."""

import os
import sys
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.py"))
TIMEOUT_S = 120  # per cell; each notebook takes well under a minute on 2 cores
# Every output is in hand once the last cell has run: the kernel is then killed, not asked to exit. A graceful exit
# tears down the interpreter's torch/diffusers modules one by one, ~3 s a notebook (measured) that tests nothing.
SHUTDOWN = "immediate"


def kernel_env(tmp: Path) -> dict:
    """The kernel's environment: offline, quiet, a non-GUI matplotlib backend (inline: figures become outputs),
    one torch thread (tiny matmuls on a shared 2-core machine: extra threads only spin), and the test's own
    temporary folder (the notebooks work in ``tempfile`` folders, which a reader keeps to look at)."""
    env = dict(os.environ)
    env.update(
        TMPDIR=str(tmp),
        ALIGNIT_PROBE_CACHE=str(tmp / "cache"),  # the world's pipeline folder, when a notebook uses the world
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        DIFFUSERS_VERBOSITY="error",
        TQDM_DISABLE="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_debug_new_method", "03_kv_control", "04_alignit_before_after"} <= names, names
    assert not list(NOTEBOOKS[0].parent.glob("*.ipynb")), "keep notebooks as percent .py files only"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_canonical_percent_format(path):
    """Saving from Jupyter (jupytext) rewrites nothing but the version lines of the header: diffs stay readable."""
    src = path.read_text()
    back = jupytext.writes(jupytext.reads(src, fmt="py:percent"), fmt="py:percent")
    version_lines = ("#       format_version", "#       jupytext_version")

    def strip(text):
        return [ln for ln in text.splitlines() if not ln.startswith(version_lines)]

    assert strip(back) == strip(src)


def test_kernel_is_this_venv(tmp_path):
    nb = jupytext.reads("# %%\nimport sys\nprint(sys.executable)\n", fmt="py:percent")
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=60, shutdown_kernel=SHUTDOWN, resources={"metadata": {"path": tmp_path}}
    )
    client.execute(env=kernel_env(tmp_path))
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert Path(out.strip()).resolve() == Path(sys.executable).resolve(), out


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One started ``python3`` kernel for the notebooks of this test process (shut down at the end)."""
    from jupyter_core.utils import run_sync

    tmp = tmp_path_factory.mktemp("kernel")
    km = nbclient.NotebookClient(nbformat.v4.new_notebook(), kernel_name="python3").create_kernel_manager()
    run_sync(km.start_kernel)(env=kernel_env(tmp), cwd=str(tmp))
    yield km, tmp
    run_sync(km.shutdown_kernel)(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel):
    km, tmp = kernel
    nb = jupytext.read(path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    reset = nbformat.v4.new_code_cell("%reset -f\nimport matplotlib.pyplot\nmatplotlib.pyplot.close('all')")
    nb.cells.insert(0, reset)  # a clean namespace: nothing left from the notebook before
    client = nbclient.NotebookClient(nb, km=km, timeout=TIMEOUT_S, resources={"metadata": {"path": str(tmp)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    noise = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr" and o.text.strip()]
    assert not noise, f"{path.name} prints on stderr: {noise}"  # no library notices or progress bars
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no figure or image inline"
    print(f"{path.name}: {seconds:.1f} s (budget: under 60 s on 2 cores; timed here, not asserted)")
