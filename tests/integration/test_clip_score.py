"""CLIP-T / CLIP-I with a tiny random CLIPModel saved as a real checkpoint (safetensors, the real CLIP tokenizer,
preprocessor_config.json): the scores are exactly CLIP's cosine similarities, preprocessing is transformers', and
the CLI prints what the API computes."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from alignit_probe.cli import main
from alignit_probe.errors import ProbeError
from alignit_probe.evaluation import ClipScorer, clip_scores
from alignit_probe.evaluation.clip_score import to_rgb

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
PREPROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 36},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 32, "width": 32},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.4, 0.3],
    "image_std": [0.2, 0.25, 0.3],
    "do_convert_rgb": True,
    "image_processor_type": "CLIPImageProcessor",
}
PROMPTS = ["a photo of a cat", "a dog on the beach", "a red car", "an oil painting of a house"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, one_thread):
    """(model in memory, tokenizer, checkpoint with OpenAI default preprocessing, checkpoint with its own
    preprocessor_config.json: shortest edge 36, crop 32, other mean and std)."""
    from transformers import CLIPConfig, CLIPModel

    from alignit_probe.models.toy import clip_tokenizer

    torch.manual_seed(0)
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, **layers),
        vision_config=dict(image_size=32, patch_size=8, **layers),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    tokenizer = clip_tokenizer()
    plain = tmp_path_factory.mktemp("clip") / "plain"
    model.save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    custom = plain.with_name("custom")
    shutil.copytree(plain, custom)
    (custom / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return model, tokenizer, plain, custom


def random_images(n, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_clip_t_is_clips_cosine_similarity(clip):
    model, tokenizer, plain, _ = clip
    images = random_images(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torchvision fallback warning, nothing else either
        scores = ClipScorer(plain).text_alignment(images, PROMPTS)
    # by hand: 32×32 images need no resize or crop; OpenAI mean and std (no preprocessor_config.json)
    pixels = torch.from_numpy(np.stack([((x / 255).astype(np.float32) - OPENAI_MEAN) / OPENAI_STD for x in images]))
    tok = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        img = unit(features(model.get_image_features(pixel_values=pixels.permute(0, 3, 1, 2))))
        txt = unit(features(model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)))
    expected = (img * txt).sum(-1).double().numpy()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert scores.shape == (4,) and np.ptp(scores) > 1e-3  # distinct scores: the comparison means something
    out = clip_scores(plain, images, PROMPTS)
    np.testing.assert_allclose(out["clip_t"], expected, atol=1e-5)
    assert out["clip_i"] is None and out["clip_i_mean"] is None and out["n_images"] == 4
    assert out["clip_t_mean"] == pytest.approx(expected.mean(), abs=1e-5)


def test_preprocessing_is_transformers(clip):
    """Shortest side → 36 (bicubic), centre crop 32, the checkpoint's mean and std; RGBA onto white; as
    transformers' PIL-backend CLIP image processor does (torchvision is not needed)."""
    import transformers

    processor_class = getattr(transformers, "CLIPImageProcessorPil", None)
    if processor_class is None and int(transformers.__version__.split(".")[0]) < 5:
        processor_class = transformers.CLIPImageProcessor
    if processor_class is None:
        pytest.skip("this transformers has no PIL-backend CLIP image processor")
    *_, custom = clip
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((50, 37), (37, 61))]
    images.append(Image.fromarray(rng.integers(0, 256, (45, 45, 4), dtype=np.uint8), "RGBA"))
    images.append(Image.fromarray(rng.integers(0, 256, (40, 33), dtype=np.uint8), "L"))
    scorer = ClipScorer(custom)
    ours = np.stack([scorer.preprocess(to_rgb(x)) for x in images])
    theirs = processor_class(**PREPROCESSOR)(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_inputs_of_every_kind_score_alike(clip, tmp_path):
    """A PIL image, its uint8 array, its float array in [0, 1] and the PNG file of it give the same score."""
    *_, custom = clip
    x = random_images(1, (40, 52), seed=3)[0]
    Image.fromarray(x).save(tmp_path / "x.png")
    forms = [
        Image.fromarray(x),
        x,
        x / 255.0,
        (x / 255.0).astype(np.float32),
        tmp_path / "x.png",
        str(tmp_path / "x.png"),
    ]
    scorer = ClipScorer(custom)
    embeds = scorer.embed_images(forms)
    np.testing.assert_allclose(embeds, np.repeat(embeds[:1], len(forms), 0), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(scorer.embed_images(np.stack([x, x]) / 255.0), embeds[:2], atol=1e-6)  # (N,H,W,3)


def test_image_alignment(clip):
    *_, custom = clip
    scorer = ClipScorer(custom)
    images, refs = random_images(3, (40, 36), seed=4), random_images(2, (48, 48), seed=5)
    np.testing.assert_allclose(scorer.image_alignment(images, images[0]), scorer.image_alignment(images, [images[0]]))
    assert scorer.image_alignment(images[1], [images[1]])[0] == pytest.approx(1.0, abs=1e-6)
    e, r = scorer.embed_images(images).astype(np.float64), scorer.embed_images(refs).astype(np.float64)
    np.testing.assert_allclose(scorer.image_alignment(images, refs), (e @ r.T).mean(1), atol=1e-6)
    out = clip_scores(custom, images, None, refs)
    np.testing.assert_allclose(out["clip_i"], (e @ r.T).mean(1), atol=1e-6)
    assert out["clip_t"] is None


def test_scores_are_permutation_equivariant_and_batch_independent(clip):
    *_, custom = clip
    images, refs = random_images(4, (33, 47), seed=6), random_images(3, seed=7)
    base = ClipScorer(custom, batch_size=32)
    t, i = base.text_alignment(images, PROMPTS), base.image_alignment(images, refs)
    perm = [2, 0, 3, 1]
    np.testing.assert_allclose(
        base.text_alignment([images[k] for k in perm], [PROMPTS[k] for k in perm]), t[perm], atol=1e-6
    )
    np.testing.assert_allclose(base.image_alignment([images[k] for k in perm], refs[::-1]), i[perm], atol=1e-6)
    for batch_size in (1, 3):
        other = ClipScorer(custom, batch_size=batch_size)
        np.testing.assert_allclose(other.text_alignment(images, PROMPTS), t, atol=1e-5)
        np.testing.assert_allclose(other.image_alignment(images, refs), i, atol=1e-5)
    np.testing.assert_allclose(base.text_alignment(images, "a red car"), base.text_alignment(images, ["a red car"] * 4))


def write_images(folder, names, seed):
    folder.mkdir()
    for name, x in zip(names, random_images(len(names), (40, 44), seed=seed)):
        Image.fromarray(x).save(folder / name)
    return folder


def test_cli_json_rows_match_the_api(clip, tmp_path, capsys):
    *_, custom = clip
    gen = write_images(tmp_path / "gen", ["img10.png", "img2.png", "img1.png"], seed=8)
    (gen / "notes.txt").write_text("not an image, skipped in a folder")
    refs = write_images(tmp_path / "refs", ["a.png", "b.jpg"], seed=9)
    (tmp_path / "prompts.txt").write_text("# in image order\na photo of a cat\n\na red car\na dog on the beach\n")
    argv = ["clipscore", "--clip", str(custom), "--images", str(gen), "--prompts", str(tmp_path / "prompts.txt")]
    argv += ["--references", str(refs), "--no-progress", "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    files = [gen / "img1.png", gen / "img2.png", gen / "img10.png"]  # natural name order
    assert [r["image"] for r in rows] == [str(f) for f in files]
    assert [r["prompt"] for r in rows] == ["a photo of a cat", "a red car", "a dog on the beach"]
    api = clip_scores(custom, files, [r["prompt"] for r in rows], sorted(refs.iterdir()))
    np.testing.assert_allclose([r["clip_t"] for r in rows], api["clip_t"], atol=1e-6)
    np.testing.assert_allclose([r["clip_i"] for r in rows], api["clip_i"], atol=1e-6)
    # text: one row per image and the means; one --prompt serves every image; no references → clip_i null
    assert main([*argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("mean") and f"{api['clip_t_mean']:.4f}" in lines[-1]
    argv = ["clipscore", "--clip", str(custom), "--images", *map(str, files), "--prompt", "a red car", "--json"]
    assert main([*argv, "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["prompt"] for r in rows] == ["a red car"] * 3 and all(r["clip_i"] is None for r in rows)
    np.testing.assert_allclose([r["clip_t"] for r in rows], clip_scores(custom, files, "a red car")["clip_t"])


@pytest.fixture
def bad(clip, tmp_path, monkeypatch):
    *_, custom = clip
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "gen", ["0.png", "1.png", "2.png"], seed=10)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_text("not a png")
    for missing in ("model.safetensors", "tokenizer.json"):
        shutil.copytree(custom, tmp_path / f"no-{missing}")
        (tmp_path / f"no-{missing}" / missing).unlink()
    return str(custom)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--clip", "nowhere/at-all-dir/", "--prompt", "x"], "does not exist"),
        (
            ["--clip", "openai/clip-vit-base-patch32", "--prompt", "x"],
            "must be a local directory (nothing downloads here)",
        ),
        (["--clip", "no-model.safetensors", "--prompt", "x"], "not a CLIP checkpoint: model.safetensors missing"),
        (["--clip", "no-tokenizer.json", "--prompt", "x"], "tokenizer.json (or vocab.json + merges.txt) missing"),
        (["--clip", "gen/0.png", "--prompt", "x"], "is a file"),
        (["--images", "empty", "--prompt", "x"], "holds no images"),
        (["--prompt", "a", "b"], "2 prompts for 3 images"),
        (["--images", "gen", "broken.png", "--prompt", "x"], "broken.png cannot be read"),
        (["--prompts", "missing.txt"], "prompts file missing.txt does not exist"),
        (["--prompt", "photo of a {} dog"], "still has a concept placeholder"),
        ([], "nothing to score"),
        (["--prompt", "x", "--batch-size", "0"], "batch size 0 is not positive"),
    ],
)
def test_cli_bad_inputs_are_one_line(bad, argv, message, capsys):
    base = {"--clip": bad, "--images": "gen"}
    for flag, value in base.items():
        if flag not in argv:
            argv = [flag, value, *argv]
    assert main(["clipscore", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and " — " in err[0], err
    assert message in err[0]


def test_api_bad_inputs(clip):
    *_, custom = clip
    scorer = ClipScorer(custom)
    for call, message in [
        (lambda: scorer.text_alignment([], []), "no images given"),
        (lambda: scorer.text_alignment(random_images(2), PROMPTS), "4 prompts for 2 images"),
        (lambda: scorer.image_alignment(random_images(2), []), "no reference images given"),
        (lambda: scorer.embed_images([np.full((8, 8, 3), 1.5)]), "float array outside [0, 1]"),
        (lambda: scorer.embed_images([np.zeros((3, 8, 8))]), "has shape (3, 8, 8)"),
        (lambda: scorer.embed_images(["missing.png"]), "image file missing.png does not exist"),
        (lambda: ClipScorer("openai/clip-vit-base-patch32"), "nothing downloads here"),
        (lambda: ClipScorer(custom, dtype="float8"), "unknown dtype"),
        (lambda: clip_scores(custom, random_images(1), None), "nothing to score"),
    ]:
        with pytest.raises(ProbeError) as e:
            call()
        assert message in str(e.value)
