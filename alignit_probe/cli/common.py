"""What every command shares: model, concept, prompt, AlignIT and generation arguments, output folders written
atomically, and the ``Probe`` built from the arguments. Bad inputs raise ``ProbeError`` (one line, exit 2)."""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import ProbeError
from ..outputs import out_dir, staged_folder  # noqa: F401  (the commands import them from here)

if TYPE_CHECKING:
    from ..alignit.engine import AlignITOptions
    from ..probe import Probe
    from ..text.concepts import Concept

DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_TEMPLATE = "photo of a {concept}"

_T = TypeVar("_T")


class Subparsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as the commands use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default in --help (only where one is set)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return super()._get_help_string(action)


def subparser(sub: Subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, formatter_class=Formatter, allow_abbrev=False)


# ------------------------------------------------------------------------------------------------ prompts, concepts
def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from ``--prompt`` or ``--prompts FILE`` (one per line; ``#`` comments). In each, ``{}`` stands for
    the next concept (``TOKEN CLASS``), ``{0}``, ``{1}`` … for the concept of that index."""
    prompts = list(args.prompt or [])
    if args.prompts:
        path = Path(args.prompts)
        if not path.exists() or path.is_dir():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ProbeError(f"prompts file {path} {what}", "pass a text file with one prompt per line")
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]  # (a BOM dropped)
        except UnicodeDecodeError:
            raise ProbeError(f"prompts file {path} is not UTF-8 text", "save it as UTF-8 text") from None
        prompts += [ln for ln in lines if ln and not ln.startswith("#")]
        if not prompts:
            raise ProbeError(f"prompts file {path} is empty", "write one prompt per line")
    if not prompts:
        raise ProbeError("no prompts given", "pass --prompt TEXT (repeatable) or --prompts FILE")
    concepts = concepts_from(args)
    prompts = [fill_template(p, concepts) for p in prompts]
    if concepts and getattr(args, "custom", None):  # said before any model loads
        from ..text.prompt_text import check_concepts_present

        check_concepts_present(prompts, concepts)
    return prompts


def fill_template(prompt: str, concepts: Iterable[Concept]) -> str:
    """``{}`` → the next concept's ``TOKEN CLASS`` (in order), ``{k}`` → concept k's."""
    fills = [" ".join(x for x in (c.token, c.class_word) if x) for c in concepts]
    counter = iter(range(len(fills) + prompt.count("{}")))

    def sub(m: re.Match) -> str:
        k = next(counter) if m.group(1) == "" else int(m.group(1))
        if k >= len(fills) and m.group(1):
            raise ProbeError(
                f"prompt {prompt!r} names concept {{{k}}}, but there are {len(fills)} --concept values "
                f"({{0}}…{{{len(fills) - 1}}})"
                if fills
                else f"prompt {prompt!r} names concept {{{k}}}, but no --concept is given",
                "number the concepts from {0}, in the order of --concept",
            )
        if k >= len(fills):
            raise ProbeError(
                f"prompt {prompt!r} has more concept placeholders than --concept values ({len(fills)})",
                "give one --concept per {} (or use {0}, {1} … to repeat one)",
            )
        return fills[k]

    return re.sub(r"\{(\d*)\}", sub, prompt)


def concepts_from(args: argparse.Namespace) -> list[Concept]:
    from ..text.concepts import Concept

    tokens = [t.strip() for t in getattr(args, "concept", None) or []]
    words = [(w.strip() or None) for w in getattr(args, "class_word", None) or []]  # "" is no class word
    if "" in tokens:
        raise ProbeError("--concept is empty", "pass the token prompts use for the concept (e.g. <new1>, sks)")
    if len(words) > len(tokens):
        raise ProbeError("more --class-word than --concept values", "give one --class-word per --concept, in order")
    words += [None] * (len(tokens) - len(words))
    for i, token in enumerate(tokens):
        if token in tokens[:i]:
            raise ProbeError(f"--concept {token} is given twice", "give each concept once (with its --class-word)")
        if len(token.split()) > 1:
            first = token.split()[0]
            raise ProbeError(
                f"--concept {token!r} holds a space: it is one token (or instance word), its class word apart",
                f"pass --concept {first} --class-word {token.split()[-1]}",
            )
    return [Concept(t, w) for t, w in zip(tokens, words)]


# ------------------------------------------------------------------------------------------------ arguments
def add_model_args(
    p: argparse.ArgumentParser, *, custom_required: bool = True, concept_required: bool = True, prompts: bool = True
) -> None:
    """The models, concepts, prompts (not for ``swap``, which has its own) and device arguments."""
    g = p.add_argument_group("models")
    g.add_argument("--baseline", required=True, help="baseline pipeline: a diffusers directory or a hub id")
    g.add_argument(
        "--custom",
        action="append",
        required=custom_required,
        metavar="[NAME=]SPEC",
        help="customized model: a pipeline directory, a training checkpoint folder (unet/, text_encoder/ as "
        "train_dreambooth.py saves them), or an artifact (Textual Inversion, A1111 .pt, Custom "
        "Diffusion folder, LoRA) applied to the baseline; SPECs of one NAME stack in order, different "
        "NAMEs are different models (branches of the store); without NAME= the model is 'custom'",
    )
    g.add_argument(
        "--concept",
        action="append",
        required=concept_required,
        metavar="TOKEN",
        help="the concept's token in prompts: a placeholder/modifier (<new1>) or an instance word (sks)",
    )
    g.add_argument(
        "--class-word",
        action="append",
        metavar="WORD",
        help="class word of each --concept, in order (e.g. cat): the baseline's partner of the concept",
    )
    if prompts:
        g.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
        g.add_argument(
            "--prompts",
            metavar="FILE",
            help="one prompt per line; {} stands for the next concept's 'TOKEN CLASS', {0} {1} … for one's",
        )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=DTYPES, default="float32", help="model weights' dtype")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (diffusers' included)")


def add_alignit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AlignIT")
    g.add_argument("--template", default=DEFAULT_TEMPLATE, help="dummy prompt; {concept} = TOKEN [CLASS]")
    g.add_argument("--layers", nargs="+", metavar="PATH", help="attn2 paths to infuse (default: all)")
    g.add_argument("--blocks", nargs="+", choices=("down", "mid", "up"), help="infuse only these UNet blocks")
    g.add_argument("--resolutions", nargs="+", type=int, help="infuse only layers at these map sides (64 32 16 8)")
    kv = g.add_mutually_exclusive_group()
    kv.add_argument("--keys-only", action="store_true", help="infuse keys, keep the customized model's values")
    kv.add_argument("--values-only", action="store_true", help="infuse values, keep the customized model's keys")
    g.add_argument("--alpha", type=float, default=1.0, help="blend: α·AlignIT + (1−α)·customized; 1 = the paper")
    g.add_argument("--denoiser", choices=("custom", "baseline"), default="custom", help="which UNet denoises")
    g.add_argument(
        "--pooled",
        choices=("baseline", "custom"),
        default="baseline",
        help="SDXL's pooled text embedding: the baseline's of the prompt without modifier, or the customized one's",
    )
    g.add_argument(
        "--end-tokens",
        choices=("baseline", "dummy"),
        default="baseline",
        help="end token and padding K/V: the baseline's (the paper) or the customized model's on the dummy prompt",
    )


def alignit_options(args: argparse.Namespace) -> AlignITOptions:
    from ..alignit.engine import AlignITOptions
    from ..alignit.plan import check_alpha, dummy_prompt
    from ..text.concepts import Concept

    check_alpha(args.alpha)
    dummy_prompt(args.template, Concept("<x>"))  # a template without {concept}: said before any model loads
    return AlignITOptions(
        template=args.template,
        layers=args.layers,
        blocks=args.blocks,
        resolutions=args.resolutions,
        keys=not args.values_only,
        values=not args.keys_only,
        alpha=args.alpha,
        denoiser=args.denoiser,
        pooled=args.pooled,
        end_tokens=args.end_tokens,
    )


def add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--steps", type=int, default=30, help="denoising steps")
    g.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale")
    g.add_argument("--height", type=int, default=None, help="image height (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="image width (default: the model's)")


def generation_kwargs(args: argparse.Namespace) -> dict:
    if args.steps < 1:
        raise ProbeError(f"--steps {args.steps} is not positive", "pass --steps 1 or more")
    for side in ("height", "width"):
        v = getattr(args, side)
        if v is not None and (v < 8 or v % 8):
            raise ProbeError(f"--{side} {v} is not a positive multiple of 8", f"pass e.g. --{side} 512")
    return dict(
        seed=args.seed, steps=args.steps, guidance_scale=args.guidance_scale, height=args.height, width=args.width
    )


def make_probe(args: argparse.Namespace, *, need_custom: bool = True) -> Probe:
    """The ``Probe`` of the model arguments (nothing loads yet; the device is checked at once)."""
    from ..probe import Probe

    if need_custom and not args.custom:
        raise ProbeError("no customized model given", "pass --custom SPEC")
    concepts = concepts_from(args)
    probe = Probe(
        args.baseline, args.custom, concepts, device=args.device, dtype=args.dtype, progress=not args.no_progress
    )
    probe.speaks_cli = True  # its errors name flags only (no Python keywords beside them)
    return probe


def check_concepts(args: argparse.Namespace) -> None:
    """A concept is needed to tell concept from context tokens; without --class-word its numbers are lost."""
    import warnings

    from ..errors import ProbeWarning
    from ..text.prompt_text import no_class_word_note

    for c in concepts_from(args):
        if c.class_word is None:
            warnings.warn(no_class_word_note(c), ProbeWarning, stacklevel=2)


# ------------------------------------------------------------------------------------------------ outputs
def save_images(images: dict, folder: Path) -> None:
    """``images[name][k]`` → ``folder/<k>-<name>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, imgs in images.items():
        for k, img in enumerate(imgs):
            img.save(folder / f"{k:03d}-{name.replace(' ', '_').replace('+', 'plus')}.png")


def json_safe(x: _T) -> _T | None:
    return None if isinstance(x, float) and not math.isfinite(x) else x


# ------------------------------------------------------------------------------------------------ outputs
PATH_ARGS = ("baseline", "custom", "prompts", "store", "shards", "clip", "references", "weights", "image", "images")


def check_out_clear(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` that is, or contains, one of the command's inputs (a model, an artifact, a prompts file, a
    store) or the working directory: writing there (with ``--overwrite``) would delete it before it is read."""
    out = getattr(args, "out", None)
    if not out:
        return
    target = Path(out).resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ProbeError(
            f"--out {out} holds the working directory; writing there would delete the folder you are in",
            "choose a new folder for --out",
        )
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str) or not text:
                continue
            for candidate in {text, text.partition("=")[2]} - {""}:  # NAME=SPEC, TITLE=PATH
                try:  # (a long string may be too long a name for the filesystem)
                    where = Path(candidate).resolve() if Path(candidate).exists() else None
                except (OSError, ValueError):
                    where = None
                if where is None:
                    continue
                if where == target or target in where.parents:
                    flag = f"--{name.replace('_', '-')}" if name not in ("store", "shards") else name
                    how = "is" if where == target else "contains"
                    raise ProbeError(
                        f"--out {out} {how} the input {candidate} ({flag}); writing there would delete it",
                        "choose another --out",
                    )


class Steps:
    """Prints each step with the seconds since the start (unless ``progress`` is false)."""

    def __init__(self, progress: bool) -> None:
        self.progress, self.t0 = progress, time.perf_counter()

    def __call__(self, text: str) -> None:
        if self.progress:
            print(f"[{time.perf_counter() - self.t0:5.1f} s] {text}", file=sys.stderr)
