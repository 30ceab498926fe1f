"""The embedded default: a tiny Stable-Diffusion-1.x pipeline built offline, saved in diffusers format; and tiny
pipelines of the SD2.x and SDXL architectures (``build_toy(out, arch="sd2" | "sdxl")``).

The architecture is SD1.x's (CLIP text encoder with causal mask, UNet2DConditionModel with cross-attention at two
resolutions and in the mid block, AutoencoderKL, DDIM), only narrow. The tokenizer is the real CLIP BPE tokenizer,
built from the vocabulary shipped in ``alignit_probe/data`` (see NOTICE.md), so words tokenize exactly as in Stable
Diffusion. Weights are random but seeded: the same seed gives bit-identical files.

SD2.x keeps its structural traits at tiny widths: a ``gelu`` CLIP text encoder (OpenCLIP-H's activation), a
tokenizer that pads with ``!`` (id 0) as SD2's does, a UNet with per-block ``attention_head_dim`` and linear
projections in its transformers, and a v-prediction scheduler. SDXL's: two CLIP text encoders of different widths
(the second with a projection, whose pooled output conditions the UNet) with SDXL's legacy token-id configs (eos id 2,
so the pooled state is taken at the highest token id), two tokenizers (the second padding with ``!``), a
``text_time`` UNet with two transformer layers per block where it attends to text, cross-attention over both
encoders' widths, and an Euler scheduler. For benchmarks, ``build_sd15_pipeline`` and ``build_sdxl_shapes_pipeline``
give the real models' shapes (random weights, narrow VAE stand-ins).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import tempfile
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..text.byte_level import bytes_to_unicode
from .quiet import quiet_libraries

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # as in openai/CLIP's SimpleTokenizer
MAX_LENGTH = 77


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (49,408 entries) and BPE merges, derived from the shipped BPE file."""
    raw = resources.files("alignit_probe.data").joinpath(BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, [" ".join(m) for m in merges]


def clip_tokenizer(pad_token: str | None = None) -> CLIPTokenizer:
    """A real ``CLIPTokenizer``: SD1.x settings (77 tokens, padding with ``<|endoftext|>``), or padding with
    ``pad_token`` (``"!"``, id 0: SD2.x's tokenizer and SDXL's second one)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    extra = {} if pad_token is None else {"pad_token": pad_token}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        files = (str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"))
        return CLIPTokenizer(*files, model_max_length=MAX_LENGTH, **extra)


TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=32,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=16,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=8,
    sample_size=32,
)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def sd_pipeline(
    text_config: dict,
    unet_config: dict,
    vae_config: dict,
    seed: int = 0,
    pad_token: str | None = None,
    prediction_type: str = "epsilon",
) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` of these configs with seeded random weights (text encoder from ``seed``, UNet
    from ``seed + 1``, VAE from ``seed + 2``), the real CLIP tokenizer (padding with ``pad_token`` if given) and
    DDIM predicting ``prediction_type``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    scheduler = dict(SCHEDULER_CONFIG, prediction_type=prediction_type)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**unet_config).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**vae_config).eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(pad_token=pad_token),
        unet=unet,
        scheduler=DDIMScheduler(**scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_toy_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny SD1.x ``StableDiffusionPipeline`` with seeded random weights (float32, CPU)."""
    return sd_pipeline(TEXT_CONFIG, UNET_CONFIG, VAE_CONFIG, seed)


SD2_TEXT_CONFIG = dict(TEXT_CONFIG, hidden_act="gelu", pad_token_id=0)
SD2_UNET_CONFIG = dict(UNET_CONFIG, attention_head_dim=(2, 4), use_linear_projection=True)


def build_sd2_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny SD2.x-shaped ``StableDiffusionPipeline`` (see the module docstring) with seeded random weights."""
    return sd_pipeline(
        SD2_TEXT_CONFIG, SD2_UNET_CONFIG, VAE_CONFIG, seed, pad_token="!", prediction_type="v_prediction"
    )


SDXL_TEXT_CONFIGS = (  # SDXL's CLIP ViT-L and OpenCLIP bigG configs keep the legacy ids bos 0, eos 2, pad 1
    dict(TEXT_CONFIG, bos_token_id=0, eos_token_id=2, pad_token_id=1),
    dict(TEXT_CONFIG, hidden_size=48, intermediate_size=96, num_hidden_layers=4, projection_dim=24, hidden_act="gelu")
    | dict(bos_token_id=0, eos_token_id=2, pad_token_id=1),
)
SDXL_UNET_CONFIG = dict(
    UNET_CONFIG,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    transformer_layers_per_block=(1, 2),
    cross_attention_dim=32 + 48,  # both encoders' penultimate states, concatenated
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 24,  # six time ids of width 8 + the pooled embedding's width
)
EULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
)


def sdxl_pipeline(
    text_configs: tuple[dict, dict],
    unet_config: dict,
    vae_config: dict,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> StableDiffusionXLPipeline:
    """A ``StableDiffusionXLPipeline`` of these configs with seeded random weights (text encoders from ``seed`` and
    ``seed + 3``, UNet from ``seed + 1``, VAE from ``seed + 2``), both tokenizers and Euler. Each module is built on
    ``device`` (random init of billions of parameters takes minutes on a CPU, seconds on a GPU), then cast to
    ``dtype``, one at a time (the peak stays near the largest module's float32 size)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def build(offset: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        torch.manual_seed(seed + offset)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            module = make().eval()
        return module if dtype in (None, module.dtype) else module.to(dtype)

    return StableDiffusionXLPipeline(
        text_encoder=build(0, lambda: CLIPTextModel(CLIPTextConfig(**text_configs[0]))),
        text_encoder_2=build(3, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**text_configs[1]))),
        unet=build(1, lambda: UNet2DConditionModel(**unet_config)),
        vae=build(2, lambda: AutoencoderKL(**vae_config)),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        scheduler=EulerDiscreteScheduler(**EULER_CONFIG),
        add_watermarker=False,
    )


def build_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL-shaped ``StableDiffusionXLPipeline`` (see the module docstring) with seeded random weights."""
    return sdxl_pipeline(SDXL_TEXT_CONFIGS, SDXL_UNET_CONFIG, VAE_CONFIG, seed)


ARCHS = ("sd1", "sd2", "sdxl")


@quiet_libraries()
def build_toy(out: str | Path, seed: int = 0, overwrite: bool = False, arch: str = "sd1") -> Path:
    """Write the toy pipeline of architecture ``arch`` (sd1, sd2, sdxl) to ``out`` in diffusers format
    (safetensors). Returns the directory."""
    from ..errors import ProbeError

    if arch not in ARCHS:
        raise ProbeError(f"unknown toy architecture {arch!r}", "use " + ", ".join(ARCHS))
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ProbeError(f"output {out} already exists", "pass --overwrite or choose another --out")
    if arch == "sdxl":
        pipe = build_sdxl_pipeline(seed)
    else:
        pipe = (build_sd2_pipeline if arch == "sd2" else build_toy_pipeline)(seed)
    return save_pipeline(pipe, out)


def save_pipeline(pipe: StableDiffusionPipeline, out: str | Path) -> Path:
    """``pipe.save_pretrained(out)`` (safetensors), each tokenizer folder then in the layout of Stable Diffusion's
    hub repositories: ``vocab.json`` and ``merges.txt`` beside ``tokenizer_config.json``, no ``tokenizer.json``
    (transformers reads those ~4x faster: it parses a ``tokenizer.json`` in Python several times per load).
    Tokenizers with tokens added beyond their vocabulary keep ``tokenizer.json`` (the vocabulary files lack them)."""
    out = Path(out)
    pipe.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        tok, folder = getattr(pipe, name, None), out / name
        if tok is None or not (folder / "tokenizer.json").is_file():
            continue
        model = tok.backend_tokenizer.model
        if any(model.token_to_id(t) is None for t in tok.get_added_vocab()):
            continue
        model.save(str(folder))
        (folder / "tokenizer.json").unlink()
    return out


@quiet_libraries()
def write_toy_custom_diffusion(
    baseline_dir: str | Path,
    out: str | Path,
    token: str | None = "<new1>",
    init_word: str = "cat",
    seed: int = 0,
    scale: float = 0.5,
) -> Path:
    """A Custom Diffusion output folder for the toy model, in the format of diffusers' train_custom_diffusion.py:
    ``pytorch_custom_diffusion_weights.safetensors`` (attn2 K/V projections, here the baseline's plus a seeded
    perturbation standing in for training) and ``<token>.safetensors`` (the modifier token's embedding; none with
    ``token=None``, as for SDXL, whose tokens need vectors for both encoders: ``write_toy_textual_inversion``)."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    from .install import fresh_custom_diffusion

    pipe = DiffusionPipeline.from_pretrained(str(baseline_dir))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    if token is not None:
        vec = _near(pipe.text_encoder, pipe.tokenizer, init_word, scale, gen)
        save_file({token: vec.contiguous()}, str(out / f"{token}.safetensors"))
    unet = pipe.unet
    procs = fresh_custom_diffusion(unet)  # attn2 K/V copied from the UNet's; plus seeded noise standing in for training
    with torch.no_grad():
        for name, proc in procs.items():
            if name.endswith("attn2.processor"):
                for mine in (proc.to_k_custom_diffusion, proc.to_v_custom_diffusion):
                    w = mine.weight.clone()
                    mine.weight.copy_(w + scale * w.std() * torch.randn(w.shape, generator=gen))
    unet.set_attn_processor(procs)
    unet.save_attn_procs(str(out), safe_serialization=True)
    return out


def _near(text_encoder, tokenizer, word: str, scale: float, gen) -> torch.Tensor:
    """``word``'s embedding row plus seeded noise of relative size ``scale`` (a stand-in for a trained vector)."""
    init = text_encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(word + "</w>")].detach()
    return init + scale * init.norm() / init.numel() ** 0.5 * torch.randn(init.shape, generator=gen)


@quiet_libraries()
def write_toy_textual_inversion(
    baseline_dir: str | Path, out: str | Path, token: str = "<new1>", init_word: str = "cat", seed: int = 0
) -> Path:
    """A Textual Inversion output folder for a toy model, as diffusers' training scripts write it:
    ``learned_embeds.safetensors`` ({token: (1, width)}, ``init_word``'s vector plus seeded noise) and, for SDXL,
    ``learned_embeds_2.safetensors`` for the second text encoder."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    pipe = DiffusionPipeline.from_pretrained(str(baseline_dir))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    encoders = [("", pipe.text_encoder, pipe.tokenizer)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders.append(("_2", pipe.text_encoder_2, pipe.tokenizer_2))
    for suffix, te, tok in encoders:
        vec = _near(te, tok, init_word, 0.5, gen)[None].contiguous()
        save_file({token: vec}, str(out / f"learned_embeds{suffix}.safetensors"))
    return out


SD15_TEXT_CONFIG = dict(
    TEXT_CONFIG,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    projection_dim=768,
)
SD15_UNET_CONFIG = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the rest: diffusers' defaults


SD15_VAE_CONFIG = dict(  # a narrow stand-in with SD's scale factor 8
    block_out_channels=(8, 8, 8, 8),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=8,
    layers_per_block=1,
)


def build_sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A pipeline of Stable Diffusion 1.5's shapes (CLIP ViT-L/14 text encoder, the 16-site SD1.5 UNet) with random
    seeded weights, for benchmarks. Its VAE is a narrow stand-in with SD's scale factor 8 (512×512 images ↔ 64×64
    latents): generate with ``output_type="latent"`` to time the denoising alone."""
    return sd_pipeline(SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG, seed)


SDXL_BASE_TEXT_CONFIGS = (  # CLIP ViT-L/14 and OpenCLIP bigG, with SDXL's legacy ids (as SDXL_TEXT_CONFIGS)
    dict(SD15_TEXT_CONFIG, bos_token_id=0, eos_token_id=2, pad_token_id=1),
    dict(SDXL_TEXT_CONFIGS[1], hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20)
    | dict(projection_dim=1280),
)
SDXL_BASE_UNET_CONFIG = dict(  # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (the rest: defaults)
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,  # 768 + 1280
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + the pooled embedding's 1280
    layers_per_block=2,
)


def build_sdxl_shapes_pipeline(
    seed: int = 0, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> StableDiffusionXLPipeline:
    """A pipeline of SDXL-base-1.0's shapes (CLIP ViT-L/14 and OpenCLIP bigG text encoders, the 70-site UNet with
    2.6 B parameters) with random seeded weights, built on ``device`` and cast to ``dtype``, for benchmarks. Its VAE
    is SD1.5's narrow stand-in (scale factor 8: 1024×1024 images ↔ 128×128 latents): generate with
    ``output_type="latent"``. On a CPU, float32 needs about 14 GB and a minute or two to initialize."""
    return sdxl_pipeline(SDXL_BASE_TEXT_CONFIGS, SDXL_BASE_UNET_CONFIG, SD15_VAE_CONFIG, seed, device, dtype)
