"""Cross-attention capture on the tiny SD1.x pipeline: maps equal softmax(Q Kᵀ/√d) computed independently."""

import inspect
import math

import numpy as np
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
from alignit_probe.models.toy import build_toy_pipeline

PROMPTS = ["a photo of a cat", "a xylophonist dog on the beach"]
ALL = AttentionSlices(per_layer=True, per_head=True, step_windows=[(0, 1), (1, 4)], native=True)


@pytest.fixture
def pipe():
    p = build_toy_pipeline(0)
    p.set_progress_bar_config(disable=True)
    return p


def encode(pipe, prompts=PROMPTS):
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0]


def run(pipe, pe, steps=2, guidance=1.0, **kw):
    return pipe(
        prompt_embeds=pe,
        num_inference_steps=steps,
        guidance_scale=guidance,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **kw,
    )


def record_attn2_inputs(unet):
    """Forward pre-hooks on every attn2: (hidden_states, encoder_hidden_states) per call, by path."""
    records, handles = {}, []
    for path in sites.attn2_paths(unet):
        records[path] = []

        def hook(module, args, kwargs, path=path):
            records[path].append((args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone()))

        handles.append(unet.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True))
    return records, handles


def direct(unet, records, cond, rows, key_fn=lambda attn, path, c: attn.to_k(c), latent=(16, 16)):
    """Per layer: Σ_calls mean_heads softmax(to_q(h[rows]) key(c)ᵀ / √d), as (prompt, [head,] token, h, w)."""
    out = {}
    with torch.no_grad():
        for path, calls in records.items():
            attn = unet.get_submodule(path)
            heads_sum = 0
            for hs, ehs in calls:
                assert torch.equal(ehs[rows], cond)  # the rows we compare against are the conditional ones
                q, k = attn.to_q(hs[rows]), key_fn(attn, path, cond)
                P, N, inner = q.shape
                H, d = attn.heads, inner // attn.heads
                q = q.view(P, N, H, d).transpose(1, 2)
                k = k.view(P, -1, H, d).transpose(1, 2)
                heads_sum = heads_sum + torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
            f = int(math.sqrt(latent[0] * latent[1] / N))
            h, w = latent[0] // f, latent[1] // f
            head_maps = heads_sum.transpose(-1, -2).reshape(P, H, -1, h, w)
            out[path] = (head_maps.mean(1), head_maps)
    return out


def check_against_direct(ds, col, expected, latent=(16, 16)):
    total = 0
    for k, path in enumerate(col.layers):
        native, heads = expected[path]
        assert ds[f"map_native_{k}"].attrs["layer"] == path
        torch.testing.assert_close(torch.from_numpy(ds[f"map_native_{k}"].values), native, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(ds[f"map_native_head_{k}"].values), heads, atol=1e-6, rtol=1e-5)
        up = F.interpolate(native, latent, mode="bilinear", align_corners=False)
        torch.testing.assert_close(torch.from_numpy(ds["map_layer"].sel(layer=path).values), up, atol=1e-6, rtol=1e-5)
        total = total + up
    torch.testing.assert_close(torch.from_numpy(ds["map_raw"].values), total, atol=1e-5, rtol=1e-5)


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


class InjectedKV:
    """An AlignIT-like processor: keys are injected (here 2·to_k(c)), attention through SDPA, with project_kv."""

    def project_kv(self, attn, c):
        return 2.0 * attn.to_k(c), attn.to_v(c)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n, _ = hidden_states.shape
        k, v = self.project_kv(attn, encoder_hidden_states)
        split = lambda t: t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(attn.to_q(hidden_states)), split(k), split(v))
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, -1)))


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


# -- DAAM's aggregation and layer choice ---------------------------------------------------------------------------
def direct_daam(unet, records, cond, rows, latent=(16, 16), key_scale=1.0):
    """Per layer: Σ_calls mean_heads max(0, bicubic(softmax(to_q(h[rows]) to_k(c)ᵀ / √d) of each head)), computed
    call by call, as (prompt, token, *latent); also the unclamped sum (to see that clamping does something)."""
    out = {}
    with torch.no_grad():
        for path, calls in records.items():
            attn = unet.get_submodule(path)
            total, unclamped = 0, 0
            for hs, ehs in calls:
                assert torch.equal(ehs[rows], cond)
                q, k = attn.to_q(hs[rows]), key_scale * attn.to_k(cond)
                P, N, inner = q.shape
                H, d = attn.heads, inner // attn.heads
                q = q.view(P, N, H, d).transpose(1, 2)
                k = k.view(P, -1, H, d).transpose(1, 2)
                probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (P, H, N, T)
                f = int(math.sqrt(latent[0] * latent[1] / N))
                heads = probs.transpose(-1, -2).reshape(P, -1, latent[0] // f, latent[1] // f)
                up = F.interpolate(heads, latent, mode="bicubic", align_corners=False) if f > 1 else heads
                total = total + up.clamp(min=0).reshape(P, H, -1, *latent).mean(1)
                unclamped = unclamped + up.reshape(P, H, -1, *latent).mean(1)
            out[path] = (total, unclamped)
    return out


class SharpKV(InjectedKV):
    """Keys 40·to_k(c): peaked attention, so bicubic upsampling undershoots and the clamp matters."""

    def project_kv(self, attn, c):
        return 40.0 * attn.to_k(c), attn.to_v(c)


def test_daam_aggregation_equals_direct_bicubic(pipe):
    procs = pipe.unet.attn_processors
    pipe.unet.set_attn_processor({k: SharpKV() if ".attn2" in k else v for k, v in procs.items()})
    pe = encode(pipe)
    records, handles = record_attn2_inputs(pipe.unet)
    slices = AttentionSlices(aggregation="daam", per_layer=True, per_head=True, native=True)
    with capture_attention(pipe, pe, slices=slices) as col:
        run(pipe, pe, steps=2, guidance=7.5)  # conditional rows 2, 3
    for h in handles:
        h.remove()
    ds = col.to_dataset(normalize_maps=None)
    assert ds.attrs["aggregation"] == "daam" and "bicubic" in ds.attrs["upsampling"]
    assert ds.attrs["layer_selection"] == "all" and ds.attrs["layers"] == col.layers
    expected = direct_daam(pipe.unet, records, pe, [2, 3], key_scale=40.0)
    undershoot = False
    for path in col.layers:
        clamped, raw = expected[path]
        got = torch.from_numpy(ds["map_layer"].sel(layer=path).values)
        torch.testing.assert_close(got, clamped, atol=1e-6, rtol=1e-5)
        undershoot |= bool((raw < -1e-7).any())
    assert undershoot  # bicubic undershoots on these maps: the clamp is what keeps them non-negative
    for name in ("map_raw", "map_layer", "map_head"):
        assert float(ds[name].min()) >= 0.0, name
    torch.testing.assert_close(
        torch.from_numpy(ds["map_raw"].values), sum(expected[p][0] for p in col.layers), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(  # the head maps are the clamped bicubic ones: their mean is the layer map
        torch.from_numpy(ds["map_head"].mean("head").values),
        torch.from_numpy(ds["map_layer"].values),
        atol=1e-6,
        rtol=1e-5,
    )
    native = direct(
        pipe.unet, records, pe, [2, 3], key_fn=lambda attn, path, c: 40.0 * attn.to_k(c)
    )  # native maps are not upsampled: same as with bilinear
    for k, path in enumerate(col.layers):
        torch.testing.assert_close(
            torch.from_numpy(ds[f"map_native_{k}"].values), native[path][0], atol=1e-6, rtol=1e-5
        )
    assert col.to_dataset().attrs["aggregation"] == "daam"


def test_daam_streaming_memory_does_not_grow_with_steps(pipe):
    pe = encode(pipe)
    slices = AttentionSlices(aggregation="daam", per_layer=True, per_head=True, step_windows=[(0, 1)], native=True)

    def footprint(steps):
        with capture_attention(pipe, pe, slices=slices) as col:
            run(pipe, pe, steps=steps, guidance=7.5)
        return {k: tuple(t.shape) for k, t in col.accumulators().items()}, col.accumulator_bytes()

    assert footprint(2) == footprint(5)


def test_daam_layers_and_given_layers(pipe):
    from alignit_probe.capture.attention import daam_layers
    from alignit_probe.errors import ProbeError

    pe = encode(pipe, PROMPTS[:1])
    with capture_attention(pipe, pe, slices=AttentionSlices(per_layer=True)) as every:
        run(pipe, pe, steps=1)
    with capture_attention(pipe, pe, slices=AttentionSlices(layers="daam", per_layer=True)) as col:
        run(pipe, pe, steps=1)
    everything, ds = every.to_dataset(normalize_maps=None), col.to_dataset(normalize_maps=None)
    # the toy UNet: maps 16x16 and 8x8 in down/up blocks, 8x8 in the mid block (factor 2): only the mid block goes
    assert col.layers == [p for p in every.layers if not p.startswith("mid_block")] == daam_layers(pipe.unet)
    assert ds.attrs["layers"] == col.layers and ds.attrs["layer_selection"] == "daam"
    kept = everything["map_layer"].sel(layer=col.layers).sum("layer")
    np.testing.assert_allclose(ds["map_raw"].values, kept.values, atol=1e-6, rtol=1e-5)
    two = [every.layers[4], every.layers[0]]
    with capture_attention(pipe, pe, slices=AttentionSlices(layers=two)) as given:
        run(pipe, pe, steps=1)
    assert given.layers == [every.layers[0], every.layers[4]]  # UNet order
    assert given.to_dataset().attrs["layer_selection"] == "given"
    with pytest.raises(ProbeError, match="valid layers"):
        with capture_attention(pipe, pe, slices=AttentionSlices(layers=["up_blocks.9.attn2"])):
            pass
    with pytest.raises(ProbeError, match="unknown aggregation"):
        AttentionSlices(aggregation="bicubic")
    with pytest.raises(ProbeError, match="not a list"):
        AttentionSlices(layers="all")


def test_daam_layers_of_an_sd15_shaped_unet():
    """SD1.5's layout (tiny widths): DAAM keeps the 15 down/up layers (maps 64, 32, 16), not the mid block's 8x8."""
    from diffusers import UNet2DConditionModel

    from alignit_probe.capture.attention import daam_layers

    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    sides = sites.site_resolutions(unet)
    chosen = daam_layers(unet)
    assert len(sides) == 16 and len(chosen) == 15
    assert sorted({sides[p] for p in chosen}) == [16, 32, 64]
    assert [p for p in sides if p not in chosen] == ["mid_block.attentions.0.transformer_blocks.0.attn2"]
