import pytest
import torch


@pytest.fixture(scope="session")
def cd_dir(toy_dir, tmp_path_factory):
    """A Custom Diffusion output folder for the toy model (modifier token <new1>, attn2 K/V)."""
    from alignit_probe.models.toy import write_toy_custom_diffusion

    return str(write_toy_custom_diffusion(toy_dir, tmp_path_factory.mktemp("cd") / "cd", token="<new1>"))


@pytest.fixture(scope="module")
def cd_pair(toy_dir, cd_dir):
    from alignit_probe.models.load import load_pair

    return load_pair(toy_dir, [cd_dir], progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: extra threads only add spin-wait (pathological on a busy 2-core machine); one thread also
    gives the same arithmetic in every process."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
