"""Embedding diagnostics against a float64 numpy reference."""

import types

import numpy as np
import pytest
import torch

from alignit_probe.models.embeddings import embedding_diagnostics


def fake_pipe(weight: torch.Tensor):
    emb = torch.nn.Embedding.from_pretrained(weight)
    tok = types.SimpleNamespace(convert_ids_to_tokens=lambda ids: [f"t{i}" for i in ids])
    return types.SimpleNamespace(text_encoder=types.SimpleNamespace(get_input_embeddings=lambda: emb), tokenizer=tok)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_norms_and_neighbours_match_a_float64_reference(dtype):
    g = torch.Generator().manual_seed(0)
    vocab = torch.randn(500, 16, generator=g) * torch.rand(500, 1, generator=g)
    learned = torch.cat([vocab, 4 * torch.randn(2, 16, generator=g)])  # two new rows, large norms
    learned[501] = 3 * vocab[7] + 0.01 * torch.randn(16, generator=g)  # nearly parallel to token 7
    base, custom = fake_pipe(vocab.to(dtype)), fake_pipe(learned.to(dtype))
    out = embedding_diagnostics(custom, base, [500, 501, 7], k=3)

    v = vocab.to(dtype).double().numpy()
    rows = learned.to(dtype).double().numpy()[[500, 501, 7]]
    vn, rn = np.linalg.norm(v, axis=1), np.linalg.norm(rows, axis=1)
    np.testing.assert_allclose(out.norm.values, rn, rtol=1e-6)
    np.testing.assert_allclose(out.norm_z.values, (rn - vn.mean()) / vn.std(), rtol=1e-5)
    np.testing.assert_allclose(out.norm_percentile.values, [(vn < n).mean() * 100 for n in rn], atol=0.2)
    cos = rows @ v.T / rn[:, None] / vn
    cos[2, 7] = -2  # token 7 is not its own neighbour
    ref = np.argsort(-cos, axis=1)[:, :3]
    assert out.neighbor_token.values.tolist() == [[f"t{i}" for i in r] for r in ref]
    np.testing.assert_allclose(out.neighbor_cosine.values, np.take_along_axis(cos, ref, 1), atol=1e-5)
    assert out.neighbor_token.values[1, 0] == "t7" and out.neighbor_cosine.values[1, 0] > 0.99
    assert out.vector_id.values.tolist() == [500, 501, 7] and out.norm_percentile.values[0] == 100.0
