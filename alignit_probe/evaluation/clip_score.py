"""CLIP-T and CLIP-I, the paper's evaluation, with any local CLIP checkpoint (transformers ``CLIPModel`` format).

CLIP-T of an image = cosine similarity of its CLIP image features and its prompt's text features; CLIP-I = cosine
similarity of its image features and each reference image's, averaged over the references. Images are preprocessed
here as ``CLIPImageProcessor`` does, from ``preprocessor_config.json`` and without torchvision: shortest side →
``size`` (bicubic PIL), centre crop → ``crop_size``, rescale, normalise. Float images are rounded to 8 bits first, so
an array and the PNG saved from it score the same. Nothing downloads: the checkpoint must be a local directory."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ProbeError
from ..models.specs import check_device

ImageLike = Image.Image | np.ndarray | str | os.PathLike
Images = ImageLike | Sequence[ImageLike]  # one image, a list, or an (N, H, W, 3) array
Prompts = str | Sequence[str]  # one str: the prompt of every image
TOKENIZE = dict(padding="max_length", truncation=True, return_tensors="pt")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_clip_dir(path: str | os.PathLike) -> Path:
    """``path`` as a local CLIPModel directory, or a ProbeError naming what is missing (nothing loads yet)."""
    p = Path(path).expanduser()
    if not p.exists():
        if HUB_ID.fullmatch(str(path)) and not str(path).startswith("."):
            raise ProbeError(
                f"CLIP model {path!r} is a hub id or no path: it must be a local directory (nothing downloads here)",
                f"download it where there is network (huggingface-cli download {path} --local-dir DIR), pass DIR",
            )
        raise ProbeError(f"CLIP model directory {p} does not exist", "check the path")
    if not p.is_dir() or (p / "model_index.json").is_file():
        what = "a diffusers pipeline (its text encoder has no image tower)" if p.is_dir() else "a file"
        raise ProbeError(f"CLIP model {p} is {what}", "pass a CLIPModel directory (config.json, model.safetensors …)")
    missing = [f for f in ("config.json",) if not (p / f).is_file()]
    if not any((p / w).is_file() for w in ("model.safetensors", "model.safetensors.index.json")):
        if (p / "pytorch_model.bin").is_file():
            raise ProbeError(
                f"{p} holds its weights only as pytorch_model.bin (a pickle, never loaded here)",
                "convert it once to model.safetensors: CLIPModel.from_pretrained(DIR).save_pretrained(DIR)",
            )
        missing.append("model.safetensors")
    if not any(all((p / f).is_file() for f in files) for files in TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        fix = "pass a folder of CLIPModel.save_pretrained, its tokenizer's and image processor's files"
        raise ProbeError(f"{p} is not a CLIP checkpoint: {', '.join(missing)} missing", fix)
    kind = read_json(p / "config.json").get("model_type")
    if kind != "clip":
        fix = "pass a full CLIP checkpoint (text and image towers), e.g. a local copy of openai/clip-vit-large-patch14"
        raise ProbeError(f"config.json of {p} describes a {kind!r} model, not a CLIPModel ('clip')", fix)
    return p


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        data = e
    if not isinstance(data, dict):
        raise ProbeError(f"{path} is not a JSON object ({data})", "restore the file from the checkpoint")
    return data


def _side(value: Any, key: str, path: Path) -> tuple[int, int] | int:
    """A size entry: (height, width), or an int for a shortest edge."""
    v = {k: x for k, x in value.items() if x is not None} if isinstance(value, dict) else value
    if isinstance(v, int) or (isinstance(v, dict) and set(v) == {"shortest_edge"}):
        return int(v if isinstance(v, int) else v["shortest_edge"])
    if isinstance(v, dict) and set(v) == {"height", "width"}:
        return int(v["height"]), int(v["width"])
    raise ProbeError(f"{key} {value!r} in {path} is not supported", "use {'shortest_edge': N} or {'height', 'width'}")


@dataclass(frozen=True)
class Preprocess:
    """CLIP's image preprocessing (the settings of ``preprocessor_config.json``; OpenAI CLIP's where absent)."""

    size: tuple[int, int] | int | None  # (height, width), or the shortest edge; None: no resize
    crop: tuple[int, int] | None
    resample: int = Image.Resampling.BICUBIC
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = OPENAI_MEAN
    std: tuple[float, ...] | None = OPENAI_STD

    @classmethod
    def from_dir(cls, path: Path) -> Preprocess:
        image_size = int(read_json(path / "config.json").get("vision_config", {}).get("image_size", 224))
        file = path / "preprocessor_config.json"
        c = read_json(file) if file.is_file() else {}
        crop = _side(c.get("crop_size", image_size), "crop_size", file) if c.get("do_center_crop", True) else None
        if isinstance(crop, int):
            crop = (crop, crop)
        size = _side(c.get("size", image_size), "size", file) if c.get("do_resize", True) else None
        out = crop or (size if isinstance(size, tuple) else None)
        if out != (image_size, image_size):
            made = f"{out[0]}×{out[1]} images" if out else "images of any shape"
            raise ProbeError(
                f"{file} makes {made} but the vision model takes {image_size}×{image_size}",
                "fix crop_size/size in preprocessor_config.json, or restore the checkpoint's own file",
            )
        return cls(
            size=size,
            crop=crop,
            resample=int(c.get("resample", Image.Resampling.BICUBIC)),
            rescale=float(c.get("rescale_factor", 1 / 255)) if c.get("do_rescale", True) else None,
            mean=tuple(c.get("image_mean", OPENAI_MEAN)) if c.get("do_normalize", True) else None,
            std=tuple(c.get("image_std", OPENAI_STD)) if c.get("do_normalize", True) else None,
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image → a (3, H, W) float32 array."""
        if isinstance(self.size, int):
            w, h = image.size
            new = (self.size, int(self.size * max(w, h) / min(w, h)))
            image = image.resize(new if w <= h else new[::-1], resample=self.resample)
        elif self.size is not None:
            image = image.resize(self.size[::-1], resample=self.resample)
        if self.crop is not None:
            (ch, cw), (w, h) = self.crop, image.size
            top, left = (h - ch) // 2, (w - cw) // 2
            image = image.crop((left, top, left + cw, top + ch))  # zero-padded where smaller, as transformers
        x = np.asarray(image, dtype=np.float32)
        if self.rescale is not None:
            x = x * np.float32(self.rescale)
        if self.mean is not None and self.std is not None:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x.transpose(2, 0, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white (as transformers' ``convert_to_rgb``)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image: ImageLike, name: str = "image") -> Image.Image:
    """A PIL image, a file, or a (H, W, 3) / (H, W) array (uint8, or float in [0, 1]) → an RGB PIL image."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        if not p.is_file():
            raise ProbeError(f"image file {p} does not exist", "check the path")
        try:
            with Image.open(p) as im:
                return to_rgb(im.copy())  # copy: loads the pixels, which outlive the closed file
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ProbeError(f"image {p} cannot be read ({e})", "pass PNG, JPEG or WebP image files") from None
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)) or 0 in x.shape:
        raise ProbeError(f"{name} has shape {x.shape}", "pass (H, W, 3) arrays, channels last")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ProbeError(f"{name} is a float array outside [0, 1]", "scale it to [0, 1] or pass uint8")
        x = np.round(x * 255)
    elif x.dtype.kind in "iu" and (x.min() < 0 or x.max() > 255):
        raise ProbeError(f"{name} is an integer array outside [0, 255]", "pass uint8 values")
    elif x.dtype.kind not in "iuf":
        raise ProbeError(f"{name} has dtype {x.dtype}", "pass uint8, or float in [0, 1]")
    return Image.fromarray(x.astype(np.uint8)).convert("RGB")


def as_list(images: Images, what: str = "images") -> list[ImageLike]:
    """One image or many (a list, or a (N, H, W, 3) array) → a non-empty list."""
    if isinstance(images, (Image.Image, str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim < 4):
        images = [images]
    if not (out := list(images)):
        raise ProbeError(f"no {what} given", f"pass at least one of the {what}")
    return out


def prompt_list(prompts: Prompts, n: int | None = None) -> list[str]:
    """Prompts as a list (one str: the prompt of each of ``n`` images), checked against the image count ``n``."""
    prompts = [prompts] * (n or 1) if isinstance(prompts, str) else list(prompts)
    if not all(isinstance(p, str) for p in prompts):
        raise ProbeError("prompts must be strings", "pass a list of str, one per image")
    if not prompts or (n is not None and len(prompts) != n):
        raise ProbeError(f"{len(prompts)} prompts for {n or 0} images", "pass one prompt per image (or one for all)")
    return prompts


class ClipScorer:
    """A local CLIP checkpoint that embeds images and prompts and scores CLIP-T / CLIP-I (cosine similarities)."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        from transformers import AutoTokenizer, CLIPModel, __version__

        self.path = check_clip_dir(path)
        self.device = check_device(device)
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ProbeError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
        self.dtype: torch.dtype = DTYPES[dtype] if isinstance(dtype, str) else (dtype or torch.float32)
        if batch_size < 1:
            raise ProbeError(f"batch size {batch_size} is not positive", "pass 1 or more")
        self.batch_size = batch_size
        self.preprocess = Preprocess.from_dir(self.path)
        key = "dtype" if int(__version__.split(".")[0]) >= 5 else "torch_dtype"
        try:
            model = CLIPModel.from_pretrained(self.path, local_files_only=True, **{key: self.dtype})
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ProbeError(f"CLIP checkpoint {self.path} cannot be loaded ({first})", "restore its files") from None
        self.model = model.to(self.device).eval()
        positions = model.config.text_config.max_position_embeddings
        self.max_length = min(positions, self.tokenizer.model_max_length or positions)

    @torch.inference_mode()
    def embed_images(self, images: Images) -> np.ndarray:
        """Unit-norm CLIP image features, (n, projection_dim) float32."""
        images, out = as_list(images), []
        for i in range(0, len(images), self.batch_size):  # decoded batch by batch: memory stays flat
            chunk = images[i : i + self.batch_size]
            pixels = [self.preprocess(load_image(x, f"image {i + k}")) for k, x in enumerate(chunk)]
            batch = torch.from_numpy(np.stack(pixels)).to(self.device, self.dtype)
            out.append(features(self.model.get_image_features(pixel_values=batch)))
        return unit(torch.cat(out).numpy())

    @torch.inference_mode()
    def embed_texts(self, prompts: Prompts) -> np.ndarray:
        """Unit-norm CLIP text features, (n, projection_dim) float32. Prompts longer than the text model's
        context (77 tokens) are truncated, as CLIP was trained."""
        prompts = prompt_list(prompts)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            tok = self.tokenizer(prompts[i : i + self.batch_size], max_length=self.max_length, **TOKENIZE)
            tok = tok.to(self.device)
            out.append(features(self.model.get_text_features(tok.input_ids, tok.attention_mask)))
        return unit(torch.cat(out).numpy())

    def text_alignment(self, images: Images, prompts: Prompts) -> np.ndarray:
        """CLIP-T per image: cosine similarity of image k and prompt k (one str: the prompt of every image)."""
        images = as_list(images)
        prompts = prompt_list(prompts, len(images))
        return np.einsum("nd,nd->n", self.embed_images(images).astype(np.float64), self.embed_texts(prompts))

    def image_alignment(self, images: Images, references: Images) -> np.ndarray:
        """CLIP-I per image: mean cosine similarity of image k and each reference image."""
        refs = self.embed_images(as_list(references, "reference images")).astype(np.float64)
        return (self.embed_images(images).astype(np.float64) @ refs.T).mean(axis=1)


def features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose pooler_output is it (5)."""
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).float().cpu()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)).astype(np.float32)


def clip_scores(
    clip_dir: str | os.PathLike,
    images: Images,
    prompts: Prompts | None,
    references: Images | None = None,
    **scorer: Any,
) -> dict[str, Any]:
    """{'clip_t', 'clip_i': per-image arrays (None where not asked), 'clip_t_mean', 'clip_i_mean', 'n_images'};
    ``scorer``: ``device``, ``dtype``, ``batch_size`` of ``ClipScorer``."""
    images = as_list(images)
    if prompts is None and references is None:
        raise ProbeError("nothing to score", "pass prompts (CLIP-T), references (CLIP-I), or both")
    prompts = None if prompts is None else prompt_list(prompts, len(images))  # checked before the model loads
    references = None if references is None else as_list(references, "reference images")
    s = ClipScorer(clip_dir, **scorer)
    t = None if prompts is None else s.text_alignment(images, prompts)
    i = None if references is None else s.image_alignment(images, references)
    means = {f"{k}_mean": None if v is None else float(v.mean()) for k, v in (("clip_t", t), ("clip_i", i))}
    return {"clip_t": t, "clip_i": i, **means, "n_images": len(images)}
