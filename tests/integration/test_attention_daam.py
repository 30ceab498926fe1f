"""Cross-attention maps aggregated as DAAM does (bicubic per head, clamp, mean) and DAAM's layer choice."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignit_probe.capture import sites
from alignit_probe.capture.attention import AttentionSlices, capture_attention
from tests.integration.attention_helpers import PROMPTS, InjectedKV, direct, encode, record_attn2_inputs, run, toy_pipe


@pytest.fixture
def pipe():
    return toy_pipe()


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
