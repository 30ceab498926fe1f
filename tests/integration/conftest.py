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


@pytest.fixture(scope="module")
def arts(toy_dir, tmp_path_factory):
    """One artifact of each kind, written as the training scripts write them."""
    root = tmp_path_factory.mktemp("artifacts")
    a = {"root": root}
    from tests.integration.artifact_files import write_cd, write_dreambooth, write_lora, write_ti

    a["ti1"] = root / "ti1" / "learned_embeds.safetensors"
    a["ti1_t"] = write_ti(a["ti1"], "<one>", 1)
    a["ti3"] = root / "ti3" / "learned_embeds.safetensors"
    a["ti3_t"] = write_ti(a["ti3"], "<three>", 3)
    a["ti3bin"] = root / "ti3bin" / "learned_embeds.bin"
    a["ti3bin_t"] = write_ti(a["ti3bin"], "<three-bin>", 3, safe=False)
    a["cd"] = write_cd(toy_dir, root / "cd")
    a["cdbin"] = write_cd(toy_dir, root / "cdbin", safe=False, tokens=("<new1>", "<new2>"))
    a["lora"] = root / "lora"
    a["lora_kv"] = write_lora(toy_dir, a["lora"])
    a["db"] = write_dreambooth(toy_dir, root / "db")
    return a


@pytest.fixture(scope="module")
def base(toy_dir):
    """The toy baseline, loaded once per module."""
    from alignit_probe.models.load import load_pipeline

    return load_pipeline(toy_dir)


@pytest.fixture(scope="module")
def clean(toy_dir):
    """One pipeline shared by the bad-input tests: each also checks that a refused artifact left it untouched."""
    from alignit_probe.models.load import load_pipeline

    return load_pipeline(toy_dir)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """The test runs with 1 and with 2 torch threads (a promised equality must not depend on the count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(n)
