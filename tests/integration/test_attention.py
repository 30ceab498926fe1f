"""Cross-attention capture on the tiny SD1.x pipeline: maps equal softmax(Q Kᵀ/√d) computed independently."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    AttnProcessor,
    CustomDiffusionAttnProcessor2_0,
    SlicedAttnProcessor,
)

from alignit_probe.analysis.maps import word_maps
from alignit_probe.capture import sites
from alignit_probe.capture.attention import AttentionSlices, capture_attention, token_strings
from tests.integration.attention_helpers import (
    ALL,
    PROMPTS,
    InjectedKV,
    check_against_direct,
    direct,
    encode,
    record_attn2_inputs,
    run,
    toy_pipe,
)


@pytest.fixture
def pipe():
    return toy_pipe()


@pytest.mark.parametrize(
    "processor",
    [None, AttnProcessor, lambda: SlicedAttnProcessor(3)],
    ids=["AttnProcessor2_0", "AttnProcessor", "SlicedAttnProcessor"],
)
def test_maps_equal_direct_softmax(pipe, processor):
    if processor is not None:
        procs = pipe.unet.attn_processors
        pipe.unet.set_attn_processor({k: processor() if ".attn2" in k else v for k, v in procs.items()})
    pe = encode(pipe)
    records, handles = record_attn2_inputs(pipe.unet)
    with capture_attention(pipe, pe, slices=ALL) as col:
        run(pipe, pe, steps=2)
    for h in handles:
        h.remove()
    ds = col.to_dataset(normalize_maps=None)
    assert ds.attrs["steps"] == 2 and col.calls == [2] * 7
    check_against_direct(ds, col, direct(pipe.unet, records, pe, [0, 1]))
    # normalized views: max over (y, x) is 1 per map; sum over layers and heads gives the global map
    dsn = col.to_dataset()
    assert float(abs(dsn["map"].max(("y", "x")) - 1).max()) < 1e-6
    torch.testing.assert_close(
        torch.from_numpy(ds["map_layer"].sum("layer").values),
        torch.from_numpy(ds["map_raw"].values),
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        torch.from_numpy(ds["map_head"].mean("head").sum("layer").values),
        torch.from_numpy(ds["map_raw"].values),
        atol=1e-5,
        rtol=1e-5,
    )


def test_calls_computed_together_equal_call_by_call(pipe, monkeypatch):
    """Probabilities computed once per step for all waiting calls (``map_batches``), also when a group is full
    mid-step, give the sums the call-by-call path gives (to float rounding), for every slice."""
    from alignit_probe.capture import attention, map_batches

    pe = encode(pipe)

    def sums():
        with capture_attention(pipe, pe, slices=ALL) as col:
            run(pipe, pe, steps=3)
        return col, {k: v.clone() for k, v in col.accumulators().items()}

    col, together = sums()
    assert len(together) >= 4 and not col._pending.groups
    monkeypatch.setattr(map_batches, "LIMIT", 1)  # every group full at its first call
    _, one_by_one = sums()
    monkeypatch.setattr(attention.AttentionCollector, "_batchable", lambda self, *a: None)
    _, per_call = sums()
    for name, value in together.items():
        torch.testing.assert_close(one_by_one[name], value, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(per_call[name], value, atol=1e-6, rtol=1e-5)
    assert any(v.abs().sum() > 0 for v in together.values())


def test_conditional_rows_only_under_guidance(pipe):
    pe = encode(pipe)
    records, handles = record_attn2_inputs(pipe.unet)
    with capture_attention(pipe, pe, slices=AttentionSlices(per_layer=True, per_head=True, native=True)) as col:
        run(pipe, pe, steps=2, guidance=7.5)  # batch [uncond0, uncond1, cond0, cond1]
    for h in handles:
        h.remove()
    assert all(ehs.shape[0] == 4 for calls in records.values() for _, ehs in calls)
    assert col.rows_captured == 2 * 7 * 2  # prompts × layers × steps: the unconditional rows were never taken
    ds = col.to_dataset(normalize_maps=None)
    assert ds.sizes["prompt"] == 2
    check_against_direct(ds, col, direct(pipe.unet, records, pe, [2, 3]))


def test_non_square_latents(pipe):
    pe = encode(pipe, PROMPTS[:1])
    records, handles = record_attn2_inputs(pipe.unet)
    with capture_attention(pipe, pe, slices=ALL) as col:
        run(pipe, pe, steps=1, height=32, width=16)  # VAE factor 2: latent 16 x 8
    for h in handles:
        h.remove()
    ds = col.to_dataset(normalize_maps=None)
    assert ds.attrs["latent_size"] == [16, 8] and ds.sizes["y"] == 16 and ds.sizes["x"] == 8
    assert ds["map_native_1"].dims == ("prompt", "token", "y_8", "x_4")
    check_against_direct(ds, col, direct(pipe.unet, records, pe, [0], latent=(16, 8)), latent=(16, 8))


def test_streaming_memory_does_not_grow_with_steps(pipe):
    pe = encode(pipe)

    def footprint(steps):
        with capture_attention(pipe, pe, slices=ALL) as col:
            run(pipe, pe, steps=steps, guidance=7.5)
        assert col.steps == steps
        return {k: (tuple(t.shape), t.dtype) for k, t in col.accumulators().items()}, col.accumulator_bytes()

    (shapes2, bytes2), (shapes6, bytes6) = footprint(2), footprint(6)
    assert shapes2 == shapes6 and bytes2 == bytes6 > 0
    assert len(shapes2) == 4 + 2 * 7  # map_raw, layer, window, head + native (+head) per layer


def test_processors_and_hooks_restored(pipe):
    unet, sdpa = pipe.unet, F.scaled_dot_product_attention
    before = dict(unet.attn_processors)
    pe = encode(pipe)
    with capture_attention(pipe, pe) as col:
        inside = unet.attn_processors
        for path in col.layers:
            wrapper = inside[path + sites.SUFFIX]
            assert wrapper is not before[path + sites.SUFFIX] and wrapper.inner is before[path + sites.SUFFIX]
            # Attention.forward filters cross_attention_kwargs by the processor's signature: the wrapper mirrors it
            assert inspect.signature(wrapper.__call__) == inspect.signature(wrapper.inner.__call__)
        assert len(unet._forward_pre_hooks) == 1
        run(pipe, pe, steps=1)
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    assert len(unet._forward_pre_hooks) == 0

    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(pipe, pe):
            run(pipe, pe, steps=1)
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    assert len(unet._forward_pre_hooks) == 0
    assert F.scaled_dot_product_attention is sdpa


def install_custom_diffusion(unet, seed=5):
    torch.manual_seed(seed)
    procs = {}
    for key, proc in unet.attn_processors.items():
        if ".attn2" in key:
            site = unet.get_submodule(key[: -len(sites.SUFFIX)])
            proc = CustomDiffusionAttnProcessor2_0(
                train_kv=True,
                train_q_out=False,
                hidden_size=site.to_q.out_features,
                cross_attention_dim=site.to_k.in_features,
            )
        procs[key] = proc
    unet.set_attn_processor(procs)


def test_custom_diffusion_processor(pipe):
    install_custom_diffusion(pipe.unet)
    cd = dict(pipe.unet.attn_processors)
    pe = encode(pipe)
    records, handles = record_attn2_inputs(pipe.unet)
    with capture_attention(pipe, pe, slices=AttentionSlices(per_layer=True, per_head=True, native=True)) as col:
        run(pipe, pe, steps=2, guidance=7.5)
        attn = pipe.unet.get_submodule(col.layers[0])
        k, _ = sites.project_kv(attn, attn.processor, pe)  # through the wrapper: still the CD projection
        torch.testing.assert_close(k, cd[col.layers[0] + sites.SUFFIX].to_k_custom_diffusion(pe))
    for h in handles:
        h.remove()
    assert col.to_dataset().attrs["processors"] == ["CustomDiffusionAttnProcessor2_0"] * 7
    cd_key = lambda attn, path, c: cd[path + sites.SUFFIX].to_k_custom_diffusion(c)
    ds = col.to_dataset(normalize_maps=None)
    check_against_direct(ds, col, direct(pipe.unet, records, pe, [2, 3], key_fn=cd_key))
    base = direct(pipe.unet, records, pe, [2, 3])  # the baseline to_k gives different maps
    assert not torch.allclose(torch.from_numpy(ds["map_native_0"].values), base[col.layers[0]][0], atol=1e-4)


def test_lora_wrapped_projections(pipe):
    from peft import LoraConfig

    torch.manual_seed(3)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=8, target_modules=["to_q", "to_k"], init_lora_weights=False))
    pe = encode(pipe, PROMPTS[:1])
    records, handles = record_attn2_inputs(pipe.unet)
    with capture_attention(pipe, pe, slices=AttentionSlices(per_layer=True, per_head=True, native=True)) as col:
        run(pipe, pe, steps=1)
    for h in handles:
        h.remove()
    check_against_direct(col.to_dataset(normalize_maps=None), col, direct(pipe.unet, records, pe, [0]))


def test_injected_kv_processor(pipe):
    procs = pipe.unet.attn_processors
    pipe.unet.set_attn_processor({k: InjectedKV() if ".attn2" in k else v for k, v in procs.items()})
    pe = encode(pipe, PROMPTS[:1])
    records, handles = record_attn2_inputs(pipe.unet)
    with capture_attention(pipe, pe, slices=AttentionSlices(per_layer=True, per_head=True, native=True)) as col:
        run(pipe, pe, steps=1, guidance=7.5)
        attn = pipe.unet.get_submodule(col.layers[2])
        k, _ = sites.project_kv(attn, attn.processor, pe)  # the wrapper forwards the processor's own project_kv
        torch.testing.assert_close(k, 2.0 * attn.to_k(pe))
    for h in handles:
        h.remove()
    key = lambda attn, path, c: 2.0 * attn.to_k(c)
    check_against_direct(col.to_dataset(normalize_maps=None), col, direct(pipe.unet, records, pe, [1], key_fn=key))


def test_step_windows_and_word_maps(pipe):
    pe = encode(pipe)
    windows = AttentionSlices(step_windows=[(0, 2), (2, 3), (0, 3), (5, 9)])
    with capture_attention(pipe, pe, slices=windows) as col:
        run(pipe, pe, steps=3, guidance=7.5)
    ds = col.to_dataset(token_strings(pipe.tokenizer, PROMPTS), normalize_maps=None)
    mw = ds["map_window"]
    assert list(ds["window"].values) == ["0:2", "2:3", "0:3", "5:9"]
    torch.testing.assert_close(
        torch.from_numpy((mw.sel(window="0:2") + mw.sel(window="2:3")).values),
        torch.from_numpy(ds["map_raw"].values),
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(torch.from_numpy(mw.sel(window="0:3").values), torch.from_numpy(ds["map_raw"].values))
    assert float(mw.sel(window="5:9").max()) == 0.0
    assert ds["token_text"].dims == ("prompt", "token") and ds["token_text"].values[1, 2] == "xy"
    words = word_maps(ds["map_raw"])
    assert words["word_text"].values[1].tolist()[:3] == ["a", "xylophonist", "dog"]
    assert words["word_tokens"].values[1, 1] == "2,3,4,5"
    expected = ds["map_raw"].isel(prompt=1, token=[2, 3, 4, 5]).sum("token")
    expected = expected / expected.max(("y", "x"))
    torch.testing.assert_close(torch.from_numpy(words.isel(prompt=1, word=1).values), torch.from_numpy(expected.values))


def test_no_capture_when_embeds_do_not_match(pipe):
    pe = encode(pipe, PROMPTS[:1])
    from alignit_probe.errors import ProbeError

    with capture_attention(pipe, pe + 1.0) as col:
        run(pipe, pe, steps=1)
    assert col.steps == 0 and col.unet_calls == 1
    with pytest.raises(ProbeError, match="no cross-attention was captured"):
        col.to_dataset()
