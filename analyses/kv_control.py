"""K/V semantic control: denoise prompt A with its keys but the values of prompt B — keys steer where attention
goes, values what is written there.

    python analyses/kv_control.py --baseline PIPELINE_DIR --key-prompt A --value-prompt B [--tokens W…] --out fig.png

One figure, one seed: A, B, keys of A + values of B at every attn2 layer, then the same swap restricted to the down,
mid and up blocks of the UNet (the other layers keep A's keys and values). With --tokens only those words of A take
B's values (position by position); without it every token does. Everything goes through `Probe.swap`.
"""

from __future__ import annotations

from _common import IMAGE_SUFFIXES, Parser, output_path, run

from alignit_probe import ProbeError

BLOCKS = ("down", "mid", "up")


def parse_args(argv=None):
    ap = Parser(__doc__)
    ap.add_argument("--baseline", required=True, metavar="PIPELINE_DIR", help="diffusers pipeline folder or hub id")
    ap.add_argument("--key-prompt", required=True, metavar="A", help="prompt whose keys (and layout) are kept")
    ap.add_argument("--value-prompt", required=True, metavar="B", help="prompt whose values are written in")
    ap.add_argument("--tokens", nargs="+", metavar="WORD", help="swap values only at these words of A (default: all)")
    ap.add_argument("--out", required=True, metavar="FIG", help="figure file (.png, .pdf, .svg, .jpg)")
    ap.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial noise, the same for every image")
    ap.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale")
    ap.add_argument("--height", type=int, help="image height (default: the model's)")
    ap.add_argument("--width", type=int, help="image width (default: the model's)")
    ap.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="model dtype")
    return ap.parse_args(argv)


def swap_images(probe, args) -> dict:
    """{column title: PIL image}: A, B, the swap at all layers, then per block."""
    gen = dict(
        tokens=args.tokens,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        height=args.height,
        width=args.width,
    )
    every = probe.swap(args.key_prompt, args.value_prompt, **gen)
    columns = {
        "A (keys)": every["A"][0],
        "B (values)": every["B"][0],
        "K of A + V of B\nall layers": every["keys A + values B"][0],
    }
    for block in BLOCKS:
        try:
            images = probe.swap(args.key_prompt, args.value_prompt, blocks=[block], **gen)
        except ProbeError as e:  # a UNet without this block (e.g. no mid-block attention): leave the column out
            print(f"note: no swap in the {block} block ({e.problem})")
            continue
        columns[f"K of A + V of B\n{block} only"] = images["keys A + values B"][0]
    return columns


def draw(columns: dict, args, out) -> None:
    """Top row: the images; bottom row: each image's absolute difference from A per pixel (what the swap changed;
    one colour scale, set by the swaps, so B saturates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arrays = {t: np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for t, img in columns.items()}
    base = next(iter(arrays.values()))
    diffs = {t: np.abs(a - base).mean(-1) for t, a in arrays.items()}
    swaps = [d for t, d in diffs.items() if t.startswith("K of A")]  # B is far from A: scale to the swaps
    top = max(float(d.max()) for d in swaps or diffs.values()) or 1.0
    fig, axes = plt.subplots(2, len(columns), figsize=(2.6 * len(columns), 5.6), squeeze=False)
    for j, (title, img) in enumerate(columns.items()):
        axes[0, j].imshow(img, interpolation="nearest")
        axes[0, j].set_title(title, fontsize=9)
        axes[1, j].imshow(diffs[title], cmap="magma", vmin=0, vmax=top, interpolation="nearest")
        axes[1, j].set_title(f"|image − A|: mean {diffs[title].mean():.4f}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    where = f"at {', '.join(args.tokens)}" if args.tokens else "at every token"
    fig.suptitle(f"A: {args.key_prompt!r}   B: {args.value_prompt!r}   (values swapped {where}; seed {args.seed})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = output_path(args.out, IMAGE_SUFFIXES)
    if args.steps < 1:
        raise ProbeError(f"--steps {args.steps} is not positive", "pass --steps 30 (or any positive number)")
    from alignit_probe import Probe  # torch: only once the arguments are good

    probe = Probe(args.baseline, device=args.device, dtype=args.dtype, progress=False)
    columns = swap_images(probe, args)
    draw(columns, args, out)
    print(f"figure written to {out} ({', '.join(t.replace(chr(10), ' ') for t in columns)})")
    return 0


if __name__ == "__main__":
    run(main)
