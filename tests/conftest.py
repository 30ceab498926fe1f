import os
import sys

# README's test command installs without compiling every installed module to bytecode (pip --no-compile: most are
# never imported). The session caches the bytecode of what it imports, once, for every later process (the xdist
# workers, CLI subprocesses, notebook kernels), also where PYTHONDONTWRITEBYTECODE is set.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# one thread per pytest-xdist worker (two workers share the 2 cores), two otherwise
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    """The embedded toy SD1.x pipeline, saved once per test session in diffusers format."""
    from alignit_probe.models.toy import build_toy

    return str(build_toy(tmp_path_factory.mktemp("toy") / "toy", seed=0))


@pytest.fixture(scope="session")
def sd2_dir(tmp_path_factory):
    """The tiny SD2.x-shaped pipeline (pads with "!", v-prediction), saved once per test session."""
    from alignit_probe.models.toy import build_toy

    return str(build_toy(tmp_path_factory.mktemp("sd2") / "sd2", seed=0, arch="sd2"))


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    """The tiny SDXL-shaped pipeline (two text encoders, text_time UNet), saved once per test session."""
    from alignit_probe.models.toy import build_toy

    return str(build_toy(tmp_path_factory.mktemp("sdxl") / "sdxl", seed=0, arch="sdxl"))


# Modules whose tests take the longest (10–25 s each on 2 cores): collected first, so that pytest-xdist hands them
# out while the short tests can still fill the other worker, not at the end where one worker runs them alone.
HEAVY_FIRST = (
    "test_notebooks",
    "test_report_html",
    "test_demo_world",
    "test_world_table",
    "test_report_page",
    "test_sdxl",
    "test_models",
    "test_scale",
)


def heavy_first(item: pytest.Item) -> int:
    name = item.path.stem
    return HEAVY_FIRST.index(name) if name in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=heavy_first)  # stable: the order inside each module stays
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def layout_sensitive():
    """Matrix products that round by batch layout (``tests.layout``): a promised equality must hold under them."""
    from tests.layout import layout_sensitive_linear

    if os.environ.get("ALIGNIT_LAYOUT_AUDIT") == "1":  # the whole session is under them already
        yield
        return
    with layout_sensitive_linear():
        yield


@pytest.fixture(autouse=True, scope="session")
def _layout_audit():
    """``ALIGNIT_LAYOUT_AUDIT=1``: the whole session under layout-sensitive products, module fixtures included
    (session scope: set up before them). Finds equalities that compare two batch layouts; subprocesses (the CLI
    run as a command) compute without them."""
    if os.environ.get("ALIGNIT_LAYOUT_AUDIT") != "1":
        yield
        return
    from tests.layout import layout_sensitive_linear

    with layout_sensitive_linear():
        yield
