"""``alignit-probe demo`` on the world (the default): the pretrained world model and two customizations of one
concept shipped with the package (Textual Inversion and Custom Diffusion, trained by ``world train``), so every image
shows a recognisable scene that the world's scorer reads exactly. Writes:

* the alignment scored live: baseline / Custom Diffusion / AlignIT on ``--samples`` context prompts from the same
  noise (the rows ``world eval --custom … --alignit --samples N --seed S`` prints; ``alignment.json``), beside the
  shipped table of both methods at 200 samples (or the ``--alignment`` file given);
* images of every branch on the first prompts with what the scorer read under each; cross-attention maps;
* every stage of the text path recorded into ``probe.zarr`` (both models, their AlignIT branches, the maps), the
  comparison printed;
* K/V swaps: keys of "a red circle", values of "a blue circle" at ``red`` only and at every token; the scorer reads
  the colour each draws;
* the HTML report, the alignment first. Uses only the public API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..probe import Probe
    from ..world.alignment import ConceptPrompts
    from ..world.concept import WorldConcept
    from .common import Steps

SHOWN = 4  # scored prompts shown in the image grid
MAPPED = 2  # prompts recorded into the store with their attention maps (the report shows two)
TI, CD = "textual-inversion", "custom-diffusion"
SWAP = ("a photo of a red circle on a white background", "a photo of a blue circle on a white background")


def as_array(images: list) -> np.ndarray:
    """PIL images → (n, h, w, 3) floats in [0, 1], as the scorer reads them."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])


def as_pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray((im * 255).round().astype(np.uint8)) for im in images]


def tables(args: argparse.Namespace, live: list[dict]) -> list:
    from ..viz.alignment import AlignmentTable
    from ..world.shipped import read_rows, shipped_table

    first = AlignmentTable(
        f"scored live: {args.samples} samples per branch",
        [dict(r, method=CD) for r in live],
        f"This run: the same rows as `alignit-probe world eval --custom custom-diffusion --concept '<new1>' "
        f"--class-word triangle --alignit --samples {args.samples} --seed {args.seed}"
        + (f" --steps {args.steps}" if args.steps else "")
        + "` (alignment.json).",
    )
    if args.alignment:
        return [first, AlignmentTable(f"from {args.alignment}", read_rows(args.alignment), "given by --alignment")]
    shipped = shipped_table()
    commands = "; ".join(f"`{c}`" for c in shipped["commands"].values())
    note = f"Shipped with the package ({shipped['date']}, seed {shipped['seed']}): {commands}."
    return [first, AlignmentTable(f"shipped: both methods, {shipped['samples']} samples", shipped["rows"], note)]


def run(args: argparse.Namespace, out: Path, step: Steps) -> int:
    from .. import AlignITOptions, Concept, Probe, compare, open_store
    from ..viz.alignment import Alignment
    from ..viz.report import report_html, write_html
    from ..world.alignment import concept_images, scored_rows
    from ..world.concept import WorldConcept
    from ..world.model import STEPS, world_pipeline_dir
    from ..world.shipped import CLASS_WORD, METHODS, TOKEN, customization_dir
    from .compare import print_table

    customs = {m: str(customization_dir(m)) for m in METHODS}
    probe = Probe(world_pipeline_dir(), customs, [Concept(TOKEN, CLASS_WORD)], device="cpu", progress=step.progress)
    probe.speaks_cli = True
    concept = WorldConcept.load(customs[CD])
    steps = args.steps or STEPS

    step(f"score the world live: baseline / {CD} / AlignIT, {args.samples} samples each")
    prompts, scored = concept_images(probe, concept, args.samples, args.seed, {"alignit": AlignITOptions()}, CD, steps)
    live = scored_rows(scored, concept, prompts.contexts, args.seed)
    (out / "alignment.json").write_text(json.dumps(live, indent=1) + "\n")
    grid = scored_grid(args, probe, concept, prompts, scored, out, step, steps)
    maps = maps_of(probe, prompts.with_token[:MAPPED], step, args.seed, steps)

    step(f"record every stage (both models, their AlignIT branches, the maps) into {out / 'probe.zarr'}")
    nodes = {f"{name}/attention": ds for name, (ds, _) in maps.items()}
    mapped = prompts.with_token[:MAPPED]
    store = probe.record(mapped, out / "probe.zarr", alignit=True, overwrite=True, nodes=nodes, command=sys.argv)
    swapped = swap_grid(probe, out, step, args.seed, steps)

    step("compare and report")
    frame = compare(store)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    tree = open_store(store)
    print_table(stage_means(rows), tree)
    alignment = Alignment(tables(args, live), {"every branch, scored": grid})
    page = report_html(tree, rows, title=str(store), images={"K/V swaps": swapped}, alignment=alignment)
    report = write_html(page, out / "report.html")
    step("done")
    print(f"report: {report.resolve()}")
    return 0


def scored_grid(
    args: argparse.Namespace,
    probe: Probe,
    concept: WorldConcept,
    prompts: ConceptPrompts,
    scored: dict,
    out: Path,
    step: Steps,
    steps: int,
) -> Path:
    """The first ``SHOWN`` scored samples of each branch (textual inversion's drawn now, from the same noise) with
    what the scorer read under each image."""
    from .. import AlignITOptions
    from ..viz.grid import image_grid
    from ..world.alignment import concept_images, readouts
    from ..world.model import GUIDANCE
    from .common import save_images

    n = min(SHOWN, len(prompts.with_token))
    shown, contexts = prompts.with_token[:n], prompts.contexts[:n]
    step(f"{TI} and its AlignIT on the first {n} prompts, from the same noise")
    _, ti = concept_images(probe, concept, n, args.seed, {"alignit": AlignITOptions()}, TI, steps, False)
    arrays = {
        "baseline": scored["baseline"][:n],
        TI: ti["custom"],
        f"alignit-{TI}": ti["alignit"],
        CD: scored["custom"][:n],
        f"alignit-{CD}": scored["alignit"][:n],
    }
    notes = {name: readouts(imgs, concept, contexts) for name, imgs in arrays.items()}
    images = {name: as_pil(imgs) for name, imgs in arrays.items()}
    save_images(images, out / "images")
    titles = dict(zip(images, ("baseline", "textual inversion", "AlignIT (TI)", "Custom Diffusion", "AlignIT (CD)")))
    return image_grid(
        {titles[name]: imgs for name, imgs in images.items()},
        shown,
        out / "alignit_grid.png",
        cell=192,
        caption=f"the first {len(shown)} scored samples ({TI}'s from the same noise); under each image what the "
        f"world's scorer read: the asked background and position, the concept | seed {args.seed}, {steps} steps, "
        f"guidance {GUIDANCE}",
        notes={titles[name]: lines for name, lines in notes.items()},
    )


def maps_of(probe: Probe, mapped: list[str], step: Steps, seed: int, steps: int) -> dict:
    """Cross-attention maps of every branch: {branch: (Dataset, images)} (the report draws them)."""
    from ..world.alignment import batch_seed
    from ..world.model import GUIDANCE
    from ..world.shipped import METHODS

    step(f"cross-attention maps of every branch on {len(mapped)} prompts")
    maps = {}
    gen = dict(seed=batch_seed(seed, 0), steps=steps, guidance_scale=GUIDANCE)
    for method in METHODS:
        maps.update(probe.attention(mapped, alignit=True, model=method, **gen))
    return maps


def swap_grid(probe: Probe, out: Path, step: Steps, seed: int, steps: int) -> Path:
    """Keys of A, values of B — at the colour word only, then at every token; the scorer reads colour and shape."""
    from ..viz.grid import image_grid
    from ..world.model import GUIDANCE
    from ..world.scorer import score_images

    key_prompt, value_prompt = SWAP
    step(f"K/V swap: keys of {key_prompt!r}, values of {value_prompt!r}")
    columns: dict[str, list] = {}
    for tokens in (["red"], None):
        swapped = probe.swap(key_prompt, value_prompt, tokens=tokens, seed=seed, steps=steps, guidance_scale=GUIDANCE)
        for name, images in swapped.items():
            columns.setdefault(name, []).extend(images)
    read = {k: [f"scorer: {s['color']} {s['shape']}" for s in score_images(as_array(v))] for k, v in columns.items()}
    return image_grid(
        columns,
        ["values of B written at 'red' only", "values of B written at every token"],
        out / "swap_grid.png",
        cell=176,
        caption=f"A: {key_prompt} | B: {value_prompt} | seed {seed}, {steps} steps",
        notes=read,
    )


def stage_means(rows: list[dict]) -> list[dict]:
    """The printed table: relative L2 at the stages a reader compares first (token embedding, encoder output, K,
    V), per branch and role, mean over layers."""
    from ..viz.stages import stage_summary

    keep = ("token_embedding", "encoder_output", "key", "value")
    summary = stage_summary(rows, "relative_l2")
    return [dict(r, layer=f"mean of {r['layers']}", metric="relative_l2") for r in summary if r["stage"] in keep]
