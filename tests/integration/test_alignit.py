"""AlignIT inside diffusers: exact invariants, injection reaching attention, restoration, bit-identical baseline."""

import numpy as np
import pytest
import torch

from alignit_probe import store as st
from alignit_probe.alignit.engine import AlignITOptions, alignit, alignit_kv, denoiser_own, generate_alignit
from alignit_probe.alignit.plan import BASELINE
from alignit_probe.alignit.swap import Source, swap_kv
from alignit_probe.capture.inject import InjectKV
from alignit_probe.capture.sdpa import intercept_sdpa, recording
from alignit_probe.capture.sites import attn2_paths, record_kv
from alignit_probe.errors import ProbeError
from alignit_probe.models.encoder import encoder_states
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.schema import short_layer
from alignit_probe.text.concepts import Concept

CONCEPTS = [Concept("<new1>", "cat")]
PROMPTS = ["photo of a <new1> cat on the beach", "a <new1> in a red hat"]
GEN = dict(seed=0, steps=2, guidance_scale=7.5, output_type="np")


@pytest.mark.parametrize("end_tokens", ["baseline", "dummy"])
def test_alignit_kv_invariants(cd_pair, end_tokens):
    """Every position's K/V is, bit for bit, the baseline's (context; start; end and padding unless
    ``end_tokens="dummy"``) or the customized model's on the dummy prompt (concept span; end and padding with
    ``"dummy"``)."""
    akv = alignit_kv(cd_pair, CONCEPTS, PROMPTS, AlignITOptions(end_tokens=end_tokens))
    base_kv = record_kv(cd_pair.baseline.unet, encoder_states(cd_pair.baseline, akv.baseline))
    dummy = akv.plans[0]  # any plan: all share the one dummy prompt
    from alignit_probe.alignit.plan import tokenize_dummies

    d = tokenize_dummies(cd_pair.custom, cd_pair.baseline.tokenizer, CONCEPTS)[0]
    dummy_kv = record_kv(cd_pair.custom.unet, encoder_states(cd_pair.custom, [d]))
    for path, (k, v) in akv.kv.items():
        for p, plan in enumerate(akv.plans):
            for i, (s, pos) in enumerate(zip(plan.source, plan.position)):
                ref_k, ref_v = (
                    (base_kv[path][0][p], base_kv[path][1][p])
                    if s == BASELINE
                    else (dummy_kv[path][0][0], dummy_kv[path][1][0])
                )
                assert torch.equal(k[p, i], ref_k[pos]) and torch.equal(v[p, i], ref_v[pos])
    assert dummy.tokens.role.count("concept") == 2
    for plan in akv.plans:
        for s, lab, role in zip(plan.source, plan.tokens.label, plan.tokens.role):
            if lab[0] in ("eos", "pad"):
                assert s == (BASELINE if end_tokens == "baseline" else 0) and role in ("special", "padding")
            elif lab[0] != "concept":
                assert s == BASELINE and role != "concept"
    with pytest.raises(ProbeError, match="end-token"):
        alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(end_tokens="custom"))


def test_injected_kv_reach_attention_for_conditional_rows_only(cd_pair, layout_sensitive):
    akv = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1])
    paths = attn2_paths(cd_pair.custom.unet)
    unet = cd_pair.custom.unet
    neg = cd_pair.custom.encode_prompt([""], "cpu", 1, False)[0].detach()
    ehs = torch.cat([neg, akv.cond_embeds])
    calls = []  # attn2 path markers, each followed by the (q, k, v) its attention call received
    hooks = [
        unet.get_submodule(p).register_forward_pre_hook(lambda m, a, path=p: calls.append(path) and None) for p in paths
    ]
    try:
        with alignit(cd_pair, akv), intercept_sdpa(recording(calls)), torch.no_grad():
            unet(torch.randn(2, 4, 16, 16), 10, encoder_hidden_states=ehs)
    finally:
        for h in hooks:
            h.remove()
    own = record_kv(unet, ehs)  # processors restored: the layer's own K/V of the call's rows, in its layout
    seen = 0
    for j, item in enumerate(calls):
        if isinstance(item, str):
            q, k, v = calls[j + 1]
            merge = lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)
            assert torch.equal(merge(k)[1], akv.kv[item][0][0]) and torch.equal(merge(v)[1], akv.kv[item][1][0])
            assert torch.equal(merge(k)[0], own[item][0][0]) and torch.equal(merge(v)[0], own[item][1][0])
            seen += 1
    assert seen == len(paths)


def test_kv_built_once_per_pipeline_call_equal_every_step(cd_pair, monkeypatch):
    """The K/V each layer attends with are built at the first step and reused (no operation added to a step): the
    images are bit-identical to building them at every step."""
    akv = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1])

    def images():
        with alignit(cd_pair, akv) as pipe:
            out = pipe(
                prompt_embeds=akv.cond_embeds,
                num_inference_steps=3,
                output_type="np",
                generator=torch.Generator().manual_seed(0),
            ).images
        return out

    reused = images()
    built = []
    original = InjectKV.__call__

    def every_step(self, *args, **kwargs):
        built.append(len(self._spliced))
        self._spliced.clear()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InjectKV, "__call__", every_step)
    fresh = images()
    assert np.array_equal(reused, fresh) and max(built) == 1  # reused before: one entry per layer


def test_plain_layers_attend_with_the_built_kv_bit_identical(toy_dir, arts, monkeypatch):
    """Where the processor is diffusers' AttnProcessor2_0 (a Textual Inversion model), the steps after the first
    attend with the built K/V without running the layer's key/value projections: the images are bit-identical to
    running the processor with its K/V replaced."""
    from alignit_probe.capture import inject
    from alignit_probe.models.load import load_pair

    pair = load_pair(toy_dir, [str(arts["ti1"])], progress=False)
    akv = alignit_kv(pair, [Concept("<one>", "cat")], ["photo of a <one> on the beach"])
    calls = []
    attend = inject.attend
    monkeypatch.setattr(inject, "attend", lambda *a: calls.append(1) or attend(*a))

    def images():
        with alignit(pair, akv) as pipe:
            return pipe(
                prompt_embeds=akv.cond_embeds,
                num_inference_steps=3,
                output_type="np",
                generator=torch.Generator().manual_seed(0),
            ).images

    direct = images()
    assert len(calls) == 2 * len(akv.kv)  # steps 2 and 3 (one UNet call each), every layer
    monkeypatch.setattr(InjectKV, "_plain", lambda self, *a: False)
    assert np.array_equal(direct, images())


def test_reused_kv_follow_a_new_negative_prompt(cd_pair, layout_sensitive):
    """Within one block, a second call with other encoder states (another negative prompt) gets its own
    unconditional K/V, although the first tensor is gone and its memory could hold the second."""
    akv = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1])
    unet = cd_pair.custom.unet
    path = attn2_paths(unet)[0]
    negs = [cd_pair.custom.encode_prompt([n], "cpu", 1, False)[0].detach() for n in ("", "blurry, low quality")]
    seen = []
    with alignit(cd_pair, akv), torch.no_grad():
        for neg in negs:
            calls = []
            with intercept_sdpa(recording(calls)):
                unet(torch.randn(2, 4, 16, 16), 10, encoder_hidden_states=torch.cat([neg, akv.cond_embeds]))
            seen.append(calls)
    first = [i for i, c in enumerate(seen[0]) if c[1].shape[-2] == 77][0]  # the first attn2 call
    merge = lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)
    for neg, calls in zip(negs, seen):
        k = merge(calls[first][1])
        own = record_kv(unet, torch.cat([neg, akv.cond_embeds]))[path][0][0]  # the call's rows, in its layout
        assert torch.equal(k[0], own) and torch.equal(k[1], akv.kv[path][0][0])


def test_processors_restored_after_exit_and_error(cd_pair):
    before = {k: id(v) for k, v in cd_pair.custom.unet.attn_processors.items()}
    akv = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1])
    with pytest.raises(RuntimeError, match="boom"):
        with alignit(cd_pair, akv):
            raise RuntimeError("boom")
    assert {k: id(v) for k, v in cd_pair.custom.unet.attn_processors.items()} == before


def test_empty_concept_span_reproduces_baseline_image_bit_for_bit(cd_pair, layout_sensitive):
    images, akv = generate_alignit(
        cd_pair, CONCEPTS, ["a red car on the beach"], AlignITOptions(denoiser="baseline"), allow_absent=True, **GEN
    )
    assert all(r != "concept" for r in akv.plans[0].tokens.role)
    # every position would take the baseline's own K/V: nothing injected, the layers project over the pipeline's
    # own rows (products that round by batch layout, ``layout_sensitive``, cannot tell the images apart)
    assert denoiser_own(akv) and not denoiser_own(
        alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(denoiser="baseline"))
    )
    assert np.array_equal(images["alignit"], images["baseline"])
    assert not np.array_equal(images["custom"], images["baseline"])


def test_alignit_changes_the_customized_image(cd_pair):
    images, _ = generate_alignit(cd_pair, CONCEPTS, PROMPTS[:1], **GEN)
    assert not np.array_equal(images["alignit"], images["custom"])


def test_options_layers_keys_only_alpha(cd_pair):
    paths = attn2_paths(cd_pair.custom.unet)
    akv = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(blocks=["mid"]))
    assert list(akv.kv) == [p for p in paths if p.startswith("mid_block")]
    full = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1])
    keys = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(keys=True, values=False))
    custom_kv = record_kv(cd_pair.custom.unet, full.custom_embeds)
    for p in paths:  # same layout as the customized prompt here: values stay the customized model's
        assert torch.equal(keys.kv[p][0], full.kv[p][0]) and torch.equal(keys.kv[p][1], custom_kv[p][1])
    half = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(alpha=0.5))
    p = paths[0]
    assert torch.allclose(half.kv[p][0], 0.5 * full.kv[p][0] + 0.5 * custom_kv[p][0])
    with pytest.raises(ProbeError, match="valid layers"):
        alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(layers=["nope.attn2"]))
    labels = [short_layer(p) for p in paths[-2:]]  # as compare prints them: the same layers as their paths
    by_label = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(layers=labels))
    assert list(by_label.kv) == paths[-2:] and all(torch.equal(by_label.kv[p][0], full.kv[p][0]) for p in paths[-2:])
    with pytest.raises(ProbeError, match="outside"):
        alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(alpha=-0.1))
    with pytest.raises(ProbeError, match="placeholder"):
        alignit_kv(cd_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(template="photo of a cat"))


def test_alignit_branch_in_store_shows_zero_shift_outside_concepts(cd_pair, tmp_path):
    from alignit_probe.analysis.metrics import compare_rows

    options = RecordOptions(batch_size=1, alignit=AlignITOptions())
    out = record_store(cd_pair, CONCEPTS, PROMPTS, tmp_path / "s.zarr", options, progress=False)
    rows = [r for r in compare_rows(st.open_store(out)) if r["model"] == "alignit"]
    assert {r["stage"] for r in rows} == {"key", "value"}
    for r in rows:
        if r["role"] in ("context", "special", "padding"):
            assert r["value"] == 0.0, r
        else:
            assert r["value"] > 0


def test_swap_keys_from_a_values_from_b(cd_pair):
    base = cd_pair.baseline
    kv, ca, pos = swap_kv(Source(base, "a dog on the grass"), Source(base, "a cat in the snow"), base, tokens=["dog"])
    assert pos == [2]
    ta = record_kv(base.unet, ca)
    cb = base.encode_prompt(["a cat in the snow"], "cpu", 1, False)[0].detach()
    tb = record_kv(base.unet, cb)
    for path, (k, v) in kv.items():
        assert torch.equal(k, ta[path][0])
        assert torch.equal(v[:, 2], tb[path][1][:, 2])
        keep = [i for i in range(77) if i != 2]
        assert torch.equal(v[:, keep], ta[path][1][:, keep])
    with pytest.raises(ProbeError, match="none of the tokens"):
        swap_kv(Source(base, "a dog"), Source(base, "a cat"), base, tokens=["zebra"])
    a = "a dog in a café in 東京"  # words of several byte-level tokens, given as written (any case)
    ids = base.tokenizer(a).input_ids
    for word in ("Café", "東京"):
        pos = swap_kv(Source(base, a), Source(base, "a cat"), base, tokens=[word])[2]
        assert [ids[i] for i in pos] == base.tokenizer(word.lower(), add_special_tokens=False).input_ids
    with pytest.raises(ProbeError, match="choose among: a dog in a café in 東京$"):
        swap_kv(Source(base, a), Source(base, "a cat"), base, tokens=["zebra"])


def test_swap_reads_a_multi_vector_token_through_its_model_only(toy_dir, arts):
    """A 3-vector Textual Inversion token in a prompt of the customized model expands as the pipeline expands it
    (A's conditioning equals the pipeline's own encoding); through the baseline, which would read it as plain
    text, it is refused; a loaded customized model that nothing uses is said to be unused."""
    from alignit_probe import Probe

    token = "<three>"  # arts["ti3"]: 3 vectors
    probe = Probe(toy_dir, {"ti": str(arts["ti3"])}, [Concept(token, "cat")], progress=False)
    custom = probe.models.pairs[0].custom
    a, b = f"a photo of a {token} on the beach", "a photo of a dog in the snow"
    kv, ca, pos = swap_kv(Source(custom, a, probe.concepts), Source(probe.models.baseline, b), custom)
    want = custom.encode_prompt([a], "cpu", 1, False)[0]  # the pipeline expands the token itself
    assert torch.equal(ca, want.detach())
    pos = swap_kv(Source(custom, a, probe.concepts), Source(probe.models.baseline, b), custom, tokens=[token])[2]
    assert pos == [5, 6, 7]  # its three vectors ("a photo of a" before it)
    with pytest.raises(ProbeError, match=f"choose among: a photo of a {token} on the beach$"):
        swap_kv(Source(custom, a, probe.concepts), Source(probe.models.baseline, b), custom, tokens=["zebra"])
    images = probe.swap(a, b, key_model="ti", steps=1, height=32, width=32)
    assert sorted(images) == ["A", "B", "keys A + values B"]
    with pytest.raises(ProbeError, match=f"holds {token}, a token only the customized model 'ti' knows"):
        probe.swap(a, b, steps=1)
    with pytest.raises(ProbeError, match="--value-model ti"):
        probe.swap(b, a, key_model="ti", steps=1)
