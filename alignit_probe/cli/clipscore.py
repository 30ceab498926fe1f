"""``alignit-probe clipscore``: the paper's evaluation of generated images with a local CLIP checkpoint — CLIP-T
(each image against its prompt) and CLIP-I (each image against the reference images, averaged over them)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..errors import ProbeError
from .common import DTYPES, Subparsers, json_safe, subparser

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def natural(path: Path) -> list:
    """Sort key: image2 before image10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def image_files(specs: list[str], flag: str) -> list[Path]:
    """Files as given; folders → their image files in natural name order. Each is checked to be an image (its header
    only: nothing is decoded before the model loads)."""
    from PIL import Image

    files: list[Path] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            found = sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES), key=natural)
            if not found:
                raise ProbeError(f"{flag} folder {p} holds no images", f"put PNG/JPEG/WebP files there ({flag} FILE …)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ProbeError(f"{flag} {p} does not exist", "pass image files or folders of them")
    for f in files:
        try:
            with Image.open(f):
                pass
        except (OSError, ValueError) as e:
            raise ProbeError(f"image {f} cannot be read ({e})", "pass PNG, JPEG or WebP image files") from None
    return files


def read_prompts(args: argparse.Namespace) -> list[str] | None:
    """``--prompt`` values, or ``--prompts FILE`` lines (blank and ``#`` lines skipped); None without either."""
    prompts = args.prompt
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise ProbeError(f"prompts file {path} does not exist", "pass a text file with one prompt per line")
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()  # (a BOM dropped)
        except (OSError, UnicodeDecodeError) as e:
            raise ProbeError(
                f"prompts file {path} cannot be read ({e})", "pass UTF-8 text, one prompt a line"
            ) from None
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not prompts:
            raise ProbeError(f"prompts file {path} holds no prompts", "write one prompt per line, in image order")
    for p in prompts or ():
        if re.search(r"\{\d*\}", p):
            raise ProbeError(
                f"prompt {p!r} still has a concept placeholder",
                "write it as CLIP should read it, e.g. 'photo of a cat'",
            )
    return prompts


def cmd_clipscore(args: argparse.Namespace) -> int:
    from ..evaluation import clip_scores
    from ..evaluation.clip_score import check_clip_dir
    from ..models.load import show_progress

    check_clip_dir(args.clip)
    images = image_files(args.images, "--images")
    prompts = read_prompts(args)
    references = image_files(args.references, "--references") if args.references else None
    if prompts is None and references is None:
        raise ProbeError("nothing to score", "pass --prompt/--prompts (CLIP-T), --references (CLIP-I), or both")
    if prompts is not None and len(prompts) not in (1, len(images)):
        raise ProbeError(
            f"{len(prompts)} prompts for {len(images)} images",
            "give one prompt per image, in the images' order (folders: natural name order), or one for all",
        )
    show_progress(not args.no_progress)
    each = prompts[0] if prompts is not None and len(prompts) == 1 else prompts  # one str: the prompt of every image
    s = clip_scores(
        args.clip, images, each, references, device=args.device, dtype=args.dtype, batch_size=args.batch_size
    )
    rows = [
        {
            "image": str(f),
            "prompt": None if prompts is None else prompts[k % len(prompts)],
            "clip_t": None if s["clip_t"] is None else json_safe(float(s["clip_t"][k])),
            "clip_i": None if s["clip_i"] is None else json_safe(float(s["clip_i"][k])),
        }
        for k, f in enumerate(images)
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len("mean"), *(len(r["image"]) for r in rows))

    def cell(x: float | None) -> str:
        return f"{'—':>7}" if x is None else f"{x:7.4f}"

    print(f"{'image':<{width}}  {'clip_t':>7}  {'clip_i':>7}  prompt")
    for r in rows:
        print(f"{r['image']:<{width}}  {cell(r['clip_t'])}  {cell(r['clip_i'])}  {r['prompt'] or ''}")
    n_refs = f", {len(references)} reference{'s' * (len(references) != 1)}" if references else ""
    print(f"{'mean':<{width}}  {cell(s['clip_t_mean'])}  {cell(s['clip_i_mean'])}  ({len(images)} images{n_refs})")
    return 0


def add_parser(sub: Subparsers) -> None:
    p = subparser(sub, "clipscore", "CLIP-T and CLIP-I of generated images with a local CLIP checkpoint")
    p.add_argument("--clip", required=True, metavar="DIR", help="local CLIPModel directory (nothing downloads)")
    p.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="DIR_OR_FILE",
        help="images to score: files, or folders (their images in natural name order)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--prompt", action="extend", nargs="+", metavar="TEXT", help="prompt of each image in order (one: of all)"
    )
    g.add_argument("--prompts", metavar="FILE", help="one prompt per line, in the images' order ('#' lines skipped)")
    p.add_argument("--references", nargs="+", metavar="DIR_OR_FILE", help="reference images of the concept (CLIP-I)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="CLIP weights' dtype")
    p.add_argument("--batch-size", type=int, default=32, help="images (and prompts) per forward pass")
    p.add_argument("--json", action="store_true", help="print JSON rows {image, prompt, clip_t, clip_i}")
    p.add_argument("--no-progress", action="store_true", help="no loading bars")
    p.set_defaults(func=cmd_clipscore)
