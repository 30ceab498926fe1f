"""What interventions add to a denoising step, in tensor operations (counted, deterministic): on a GPU the host
launches each one, and at SDXL's sizes that is what a step waits for (``benchmarks/bench_ops.py``)."""

import torch

from alignit_probe.alignit.engine import alignit, alignit_kv
from alignit_probe.capture.attention import capture_attention
from alignit_probe.text.concepts import Concept
from benchmarks.op_count import OpCount
from tests.integration.attention_helpers import encode, toy_pipe

GEN = dict(guidance_scale=7.5, output_type="latent")


def per_step(generate) -> float:
    """Operations per denoising step: the difference of a 1-step and a 4-step generation, over 3."""
    counts = []
    for steps in (1, 4):
        with torch.no_grad(), OpCount() as c:
            generate(steps)
        counts.append(c.n)
    return (counts[1] - counts[0]) / 3


def test_maps_computed_together_add_far_fewer_operations(monkeypatch):
    """Probabilities computed once per step for all calls of one shape (``map_batches``) add under half the
    operations the call-by-call path adds (SDXL's topology: 168 against 1,050 per step)."""
    from alignit_probe.capture import attention

    pipe = toy_pipe()
    pe = encode(pipe)
    kw = dict(prompt_embeds=pe, **GEN)

    def plain(steps):
        pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kw)

    def maps(steps):
        with capture_attention(pipe, pe):
            plain(steps)

    base = per_step(plain)
    together = per_step(maps) - base
    monkeypatch.setattr(attention.AttentionCollector, "_batchable", lambda self, *a: None)
    call_by_call = per_step(maps) - base
    assert 0 < together < 0.5 * call_by_call, (together, call_by_call)


def test_alignit_adds_no_operation_to_a_step(cd_pair, toy_dir, arts):
    """After the first step AlignIT adds no operation (Custom Diffusion's processors: K/V replaced at attention),
    and on plain layers (a Textual Inversion model) it removes the key and value projections."""
    from alignit_probe.models.load import load_pair

    ti_pair = load_pair(toy_dir, [str(arts["ti1"])], progress=False)
    ops = {}
    for name, pair, concept in ((("cd", cd_pair, "<new1>")), ("ti", ti_pair, "<one>")):
        akv = alignit_kv(pair, [Concept(concept, "cat")], [f"photo of a {concept} cat on the beach"])

        def run(pipe, steps, akv=akv):
            g = torch.Generator().manual_seed(0)
            pipe(prompt_embeds=akv.cond_embeds, num_inference_steps=steps, generator=g, **GEN)

        def aligned(steps, pair=pair, run=run, akv=akv):
            with alignit(pair, akv) as pipe:
                run(pipe, steps)

        ops[name] = per_step(aligned), per_step(lambda steps, pair=pair, run=run: run(pair.custom, steps))
    assert ops["cd"][0] == ops["cd"][1]
    assert ops["ti"][0] < ops["ti"][1], ops
