"""AlignIT's pure functions: plan layout, infusion, blending."""

import pytest
import torch

from alignit_probe.alignit.plan import BASELINE, alignit_plan, blend, dummy_prompt, infuse
from alignit_probe.errors import ProbeError
from alignit_probe.text.concepts import Concept, tokenize_pair
from tests.unit.test_concepts import FakePipe


def plan_for(prompt, concepts, pipe, tok, template="photo of a {concept}"):
    ct, bt = tokenize_pair(prompt, pipe, tok, concepts, allow_absent=True)
    dummies = {c: tokenize_pair(dummy_prompt(template, k), pipe, tok, [k])[0] for c, k in enumerate(concepts)}
    return alignit_plan(ct, bt, dummies), ct, bt, dummies


def test_plan_keeps_context_and_takes_dummy_span(base_tok):
    pipe = FakePipe({"<new1>": 1})
    plan, ct, bt, dummies = plan_for("photo of a <new1> cat on the beach", [Concept("<new1>", "cat")], pipe, base_tok)
    assert len(plan.tokens.ids) == 77
    assert plan.tokens.ids == ct.ids  # same layout as the customized prompt here
    for s, p, role in zip(plan.source, plan.position, plan.tokens.role):
        if role == "concept":
            assert s == 0 and dummies[0].role[p] == "concept"
        else:
            assert s == BASELINE and bt.role[p] == role


def test_spans_of_different_length_keep_order_and_length(base_tok):
    pipe = FakePipe({"<new1>": 3})
    plan, ct, bt, _ = plan_for("a <new1> on the beach", [Concept("<new1>", "cat")], pipe, base_tok)
    # dummy span '<new1> <new1>_1 <new1>_2 cat' (4 tokens) replaces baseline span 'cat' (1 token)
    shown = [t for t, r in zip(plan.tokens.tokens, plan.tokens.role) if r != "padding"]
    assert shown == [
        "<|startoftext|>",
        "a</w>",
        "<new1>",
        "<new1>_1",
        "<new1>_2",
        "cat</w>",
        "on</w>",
        "the</w>",
        "beach</w>",
        "<|endoftext|>",
    ]
    assert len(plan.tokens.ids) == 77
    pads_used = [p for s, p, r in zip(plan.source, plan.position, plan.tokens.role) if r == "padding"]
    assert pads_used == [p for p, r in enumerate(bt.role) if r == "padding"][: len(pads_used)]


def test_infuse_is_exact_and_empty_span_is_baseline(base_tok):
    pipe = FakePipe({"<new1>": 1})
    plan, ct, bt, dummies = plan_for("photo of a <new1> cat on the beach", [Concept("<new1>", "cat")], pipe, base_tok)
    base, dummy = torch.randn(77, 8), torch.randn(77, 8)
    out = infuse(plan, base, {0: dummy})
    for i, (s, p) in enumerate(zip(plan.source, plan.position)):
        assert torch.equal(out[i], (base if s == BASELINE else dummy)[p])
    empty, _, _, _ = plan_for("photo of a cat on the beach", [], pipe, base_tok)
    assert torch.equal(infuse(empty, base, {}), base)


def test_blend_endpoints():
    a, c = torch.randn(5, 3), torch.randn(5, 3)
    has = torch.tensor([True, True, False, True, True])
    assert torch.equal(blend(a, c, has, 1.0), a)
    out0 = blend(a, c, has, 0.0)
    assert torch.equal(out0[has], c[has]) and torch.equal(out0[~has], a[~has])
    with pytest.raises(ProbeError, match="outside"):
        blend(a, c, has, 1.5)


def test_dummy_prompt_needs_concept():
    with pytest.raises(ProbeError, match="placeholder"):
        dummy_prompt("photo of a cat", Concept("<new1>", "cat"))
    assert dummy_prompt("photo of a {concept}", Concept("<new1>", "cat")) == "photo of a <new1> cat"


def test_several_concepts_each_take_their_own_dummy_span(base_tok):
    pipe = FakePipe({"<new1>": 2, "<new2>": 1})
    cs = [Concept("<new1>", "cat"), Concept("<new2>", "dog")]
    plan, ct, bt, dummies = plan_for("a <new2> dog chasing a <new1> cat", cs, pipe, base_tok)
    spans = [(s, plan.tokens.tokens[i]) for i, s in enumerate(plan.source) if s != BASELINE]
    assert spans == [(1, "<new2>"), (1, "dog</w>"), (0, "<new1>"), (0, "<new1>_1"), (0, "cat</w>")]
    assert [t for t, r in zip(plan.tokens.tokens, plan.tokens.role) if r == "context"] == [
        "a</w>",
        "chasing</w>",
        "a</w>",
    ]


def test_batched_infusion_equals_infusion_per_prompt(base_tok):
    from alignit_probe.alignit.plan import gather_onto, infuse_batch, partners_batch

    pipe = FakePipe({"<new1>": 2, "<new2>": 1})
    cs = [Concept("<new1>", "cat"), Concept("<new2>", "dog")]
    prompts = ["photo of a <new1> cat and a <new2> dog", "a <new2> on the beach", "<new1> cat"]
    pairs = [tokenize_pair(p, pipe, base_tok, cs) for p in prompts]
    plans, dummies = [], None
    for ct, _ in pairs:
        plan, _, _, dummies = plan_for(ct.text, cs, pipe, base_tok)
        plans.append(plan)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(len(prompts), 77, 6, generator=gen)
    dummy = {c: torch.randn(77, 6, generator=gen) for c in dummies}
    custom = torch.randn(len(prompts), 77, 6, generator=gen)
    one = torch.stack([infuse(plan, base[p], dummy) for p, plan in enumerate(plans)])
    assert torch.equal(infuse_batch(plans, base, dummy), one)
    got, has = partners_batch(plans, [ct for ct, _ in pairs], custom)
    for p, plan in enumerate(plans):
        want, want_has = gather_onto(plan, pairs[p][0], custom[p])
        assert torch.equal(got[p], want) and torch.equal(has[p], want_has)
