"""What the cross-attention map tests share: the toy pipeline, prompts, a guided run, and maps recomputed directly
from the attn2 inputs (the reference the captured maps must equal)."""

import math

import torch
import torch.nn.functional as F

from alignit_probe.capture import sites
from alignit_probe.capture.attention import AttentionSlices
from alignit_probe.models.toy import build_toy_pipeline

PROMPTS = ["a photo of a cat", "a xylophonist dog on the beach"]
ALL = AttentionSlices(per_layer=True, per_head=True, step_windows=[(0, 1), (1, 4)], native=True)


def toy_pipe():
    """The toy SD1.x pipeline, quiet."""
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
