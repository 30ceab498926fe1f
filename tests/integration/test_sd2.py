"""SD2.x (the tiny SD2-shaped pipeline: "!" padding, gelu text encoder, linear-projection UNet, v-prediction):
record, compare, AlignIT, images and attention maps work unchanged."""

import numpy as np
import pytest
import torch

from alignit_probe import Concept, Probe
from alignit_probe import store as st
from alignit_probe.alignit.engine import AlignITOptions, alignit_kv, generate_alignit
from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.capture.sites import record_kv
from alignit_probe.models.encoder import encoder_states
from alignit_probe.models.load import load_pair
from alignit_probe.models.toy import write_toy_custom_diffusion
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.schema import BASELINE
from alignit_probe.text.concepts import tokenize_pair

CONCEPTS = [Concept("<new1>", "cat")]
PROMPTS = ["photo of a <new1> cat on the beach!", "a <new1> cat wearing a red hat"]
GEN = dict(seed=0, steps=2, guidance_scale=7.5, output_type="np")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd2_pair(sd2_dir, tmp_path_factory):
    cd = write_toy_custom_diffusion(sd2_dir, tmp_path_factory.mktemp("sd2cd") / "cd", token="<new1>")
    pair = load_pair(sd2_dir, [str(cd)], progress=False)
    for pipe in (pair.baseline, pair.custom):
        pipe.set_progress_bar_config(disable=True)
    return pair


def test_sd2_pipeline_shape(sd2_pair):
    pipe = sd2_pair.baseline
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.tokenizer.pad_token == "!" and pipe.tokenizer.pad_token_id == 0
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.text_encoder.config.hidden_act == "gelu" and pipe.unet.config.use_linear_projection


def test_padding_with_bang_keeps_roles_right(sd2_pair):
    """SD2 pads with "!" (id 0), and a prompt's own trailing "!" is id 0 too: roles come from structure (padding is
    what follows the end token), never from the id."""
    ct, bt = tokenize_pair(PROMPTS[0], sd2_pair.custom, sd2_pair.baseline.tokenizer, CONCEPTS)
    eos = ct.role.index("special", 1)
    assert ct.ids[eos] == 49407 and ct.ids[eos - 1] == 0 and ct.role[eos - 1] == "context"
    assert set(ct.ids[eos + 1 :]) == {0} and set(ct.role[eos + 1 :]) == {"padding"}
    tok = sd2_pair.custom.tokenizer
    assert ct.ids == tok(sd2_pair.custom.maybe_convert_prompt(PROMPTS[0], tok), padding="max_length").input_ids
    assert bt.role[bt.role.index("special", 1) - 1] == "context"


def test_record_and_compare(sd2_pair, tmp_path):
    options = RecordOptions(batch_size=1, alignit=AlignITOptions())
    out = record_store(sd2_pair, CONCEPTS, PROMPTS, tmp_path / "s.zarr", options, progress=False)
    tree = st.open_store(out)
    stored = [st.store_attrs(tree)["options"]["alignit"], st.model_attrs(tree, "alignit")["options"]]
    assert all("alpha" in o and "pooled" not in o for o in stored)  # no pooled embedding: no pooled option
    for model, pipe in (("custom", sd2_pair.custom), ("baseline", sd2_pair.baseline)):
        text = st.group(tree, model, "text")
        prompts = [str(p) for p in text.prompt_text.values]
        # prompt by prompt, as recorded (batch size 1): the same rows, so equal whatever the rounding by layout
        expected = [pipe.encode_prompt(p, "cpu", 1, False)[0].detach() for p in prompts]
        assert np.array_equal(text.encoder_output.values, torch.cat(expected).numpy())
        kvs = [record_kv(pipe.unet, c) for c in expected]
        for path in kvs[0]:
            g = st.group(tree, model, f"kv/{path}")
            k, v = (torch.cat([kv[path][i] for kv in kvs]).numpy() for i in (0, 1))
            assert np.array_equal(g.key.values, k) and np.array_equal(g.value.values, v)
    rows = compare_rows(tree, n_boot=10)
    keys = [r for r in rows if r["stage"] == "key" and r["metric"] == "relative_l2"]
    assert {r["role"] for r in keys if r["value"] is not None and r["value"] > 0} >= {"concept", "context"}
    lab = st.token_labels(tree, "custom")
    assert list(lab.token_str.values[0][-2:].astype(object)) == ["!", "!"]


def test_alignit_invariants_and_images(sd2_pair, layout_sensitive):
    akv = alignit_kv(sd2_pair, CONCEPTS, PROMPTS[:1])
    base_kv = record_kv(sd2_pair.baseline.unet, encoder_states(sd2_pair.baseline, akv.baseline))
    plan = akv.plans[0]
    outside = [i for i, s in enumerate(plan.source) if s == BASELINE]
    for path, (k, v) in akv.kv.items():
        pos = torch.tensor([plan.position[i] for i in outside])
        assert torch.equal(k[0, outside], base_kv[path][0][0, pos])
        assert torch.equal(v[0, outside], base_kv[path][1][0, pos])
    images, _ = generate_alignit(
        sd2_pair, CONCEPTS, ["a red car on the beach"], AlignITOptions(denoiser="baseline"), allow_absent=True, **GEN
    )
    assert np.array_equal(images["alignit"], images["baseline"])
    assert not np.array_equal(images["custom"], images["baseline"])


def test_probe_alignit_attention_and_swap(sd2_pair):
    probe = Probe(sd2_pair.baseline, {"cd": sd2_pair.custom}, CONCEPTS, progress=False)
    images = probe.alignit(PROMPTS[:1], steps=2, output_type="np")
    assert set(images) == {"baseline", "cd", "alignit"} and images["alignit"][0].shape == (32, 32, 3)
    maps = probe.attention(PROMPTS[:1], steps=2, alignit=True)
    ds, _ = maps["alignit"]
    assert ds["map"].sizes["token"] == 77 and np.isfinite(ds["map"].values).all()
    swapped = probe.swap("a dog on the grass", "a cat in the snow", tokens=["dog"], steps=2)
    assert set(swapped) == {"A", "B", "keys A + values B"}
