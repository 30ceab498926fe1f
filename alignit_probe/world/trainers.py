"""Customization trainers for the world model that write the official diffusers training scripts' output formats,
so every loader of the package (``load_pair``, ``Probe``) reads what they write as it reads the scripts' outputs:

* ``textual-inversion`` (``textual_inversion.py``): placeholder ``<new1>`` (N vectors: ``<new1>``, ``<new1>_1`` …),
  initialised from the class word's row, only its rows trained; ``learned_embeds.safetensors`` = {token: (N, width)}.
* ``custom-diffusion`` (``train_custom_diffusion.py``): the modifier token's row and every attn2's K/V projections,
  through ``CustomDiffusionAttnProcessor2_0`` (train_kv, initialised from the baseline's to_k/to_v);
  ``pytorch_custom_diffusion_weights.safetensors`` (``unet.save_attn_procs``) and ``<token>.safetensors`` =
  {token: (width,)}.
* ``dreambooth`` (``train_dreambooth.py``): the whole UNet (and, with ``train_text_encoder``, the text encoder at a
  tenth of the rate) on the instance prompt with an existing rare word (``sks``); a full pipeline folder.
* ``lora`` (``train_dreambooth_lora.py``): a peft LoRA of rank ``rank`` on the UNet's attention to_q/to_k/to_v/
  to_out.0; ``pytorch_lora_weights.safetensors`` (``save_lora_weights``).

Every output also holds ``world_concept.json`` (what the concept is) and ``train_config.json`` (method, steps, lr,
seed, references, timings). Training runs on all K references at once (``train_loop.fit``), and is written into
``<out>.partial`` first, so an interrupted run leaves nothing half-written at ``out``.

The default steps and rates (``DEFAULTS``) train each method in under a minute on a 2-core CPU and over-fit the
references' single background, which is what the world exists to show: on the shipped world model, whose samples
show the asked background every time, the customized models follow "on a black background" in at most a quarter
of samples (seeds 0 and 1, 16 samples each), drawing white (the references'), gray or purple instead.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ProbeError
from ..models.quiet import quiet_libraries
from .concept import WorldConcept
from .train_loop import TrainingPlan, fit, load_baseline

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

METHODS = ("textual-inversion", "custom-diffusion", "dreambooth", "lora")
DEFAULT_TOKENS = {"textual-inversion": "<new1>", "custom-diffusion": "<new1>", "dreambooth": "sks", "lora": "sks"}
DEFAULTS = {  # method: (steps, learning rate); each 25-50 s on a 2-core CPU with 8 references
    "textual-inversion": (200, 5e-3),
    "custom-diffusion": (150, 5e-3),
    "dreambooth": (150, 3e-4),
    "lora": (250, 5e-3),
}
TEXT_LR_FACTOR = 0.1  # DreamBooth's text encoder learns at this fraction of the UNet's rate
WEIGHT_DECAY = 1e-2  # diffusers' scripts' --adam_weight_decay
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TI_FILE = "learned_embeds.safetensors"
CD_FILE = "pytorch_custom_diffusion_weights.safetensors"
CONFIG_FILE = "train_config.json"


def train_concept(
    method: str,
    out: str | Path,
    concept: WorldConcept,
    baseline: str | Path | None = None,
    steps: int | None = None,
    lr: float | None = None,
    num_vectors: int = 1,
    rank: int = 4,
    train_text_encoder: bool = False,
    references: int = 8,
    device: str | torch.device | None = "cpu",
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Customize ``baseline`` (a world weights file, a pipeline folder, or None: the shipped world model) on
    ``references`` renders of ``concept`` with ``method``; write the method's diffusers-format output to ``out``
    (refused if not empty, unless ``overwrite``). ``steps`` / ``lr`` default to ``DEFAULTS[method]``. Returns
    ``out``."""
    from ..models.specs import check_device
    from ..outputs import out_dir, staged_folder

    t0 = time.time()
    steps, lr = check_options(method, steps, lr, num_vectors, rank, train_text_encoder, references, concept)
    dev = check_device(device)
    out = out_dir(str(out), overwrite)
    with quiet_libraries():
        pipe = load_baseline(baseline, dev)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seed peft's LoRA init (global RNG), leave the caller's RNG as it was
        torch.manual_seed(seed)
        plan = PLANS[method](pipe, concept, lr, num_vectors=num_vectors, rank=rank, text_encoder=train_text_encoder)
    images = concept.reference_images(references, seed)
    load_s = time.time() - t0
    stats = fit(pipe, plan, images, steps, seed, progress, desc=f"{method} {concept.token}")
    t1 = time.time()
    with staged_folder(out) as tmp, quiet_libraries():
        plan.save(tmp)
        concept.save(tmp)
        config = dict(
            method=method,
            steps=steps,
            lr=lr,
            seed=seed,
            references=references,
            token=concept.token,
            class_word=concept.class_word,
            prompt=concept.train_prompt(),
            num_vectors=num_vectors if method == "textual-inversion" else None,
            rank=rank if method == "lora" else None,
            train_text_encoder=train_text_encoder if method == "dreambooth" else None,
            text_lr=lr * TEXT_LR_FACTOR if train_text_encoder else None,
            weight_decay=WEIGHT_DECAY,
            baseline=str(Path(baseline).resolve()) if baseline is not None else "shipped world model",
            device=str(dev),
            loss={k: v for k, v in stats.items() if k.endswith("loss")},
            timings=dict(
                load_s=round(load_s, 2),
                train_s=stats["train_s"],
                s_per_step=round(stats["train_s"] / steps, 4),
                save_s=round(time.time() - t1, 2),
                total_s=round(time.time() - t0, 2),
            ),
            concept=asdict(concept),
            versions=versions(),
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return out


def versions() -> dict[str, str]:
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("torch", "diffusers", "transformers", "peft")}


def check_options(
    method: str,
    steps: int | None,
    lr: float | None,
    num_vectors: int,
    rank: int,
    train_text_encoder: bool,
    references: int,
    concept: WorldConcept,
) -> tuple[int, float]:
    """Every option checked before anything loads; returns (steps, lr) with the method's defaults filled in."""
    if method not in METHODS:
        raise ProbeError(f"unknown training method {method!r}", "use " + ", ".join(METHODS))
    steps = DEFAULTS[method][0] if steps is None else steps
    lr = DEFAULTS[method][1] if lr is None else lr
    if not isinstance(steps, int) or steps < 1:
        raise ProbeError(f"--steps {steps} is not a positive number of steps", "pass --steps 1 or more")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ProbeError(f"--lr {lr} is not a positive learning rate", f"pass e.g. --lr {DEFAULTS[method][1]}")
    if not isinstance(references, int) or references < 1:
        raise ProbeError(f"--references {references} is not positive", "pass --references 1 or more (e.g. 8)")
    if num_vectors < 1:
        raise ProbeError(f"--num-vectors {num_vectors} is not positive", "pass --num-vectors 1 or more")
    if num_vectors != 1 and method != "textual-inversion":
        raise ProbeError(f"--num-vectors applies to textual-inversion, not {method}", "drop --num-vectors")
    if rank < 1:
        raise ProbeError(f"--rank {rank} is not positive", "pass --rank 1 or more (e.g. 4)")
    if train_text_encoder and method != "dreambooth":
        raise ProbeError(f"--train-text-encoder applies to dreambooth, not {method}", "drop --train-text-encoder")
    token = concept.token
    if not token or token != token.strip() or any(c.isspace() or c in "/\\" for c in token):
        raise ProbeError(f"token {token!r} is empty or holds spaces or slashes", "pass one word, e.g. --token <new1>")
    return steps, float(lr)


# ------------------------------------------------------------------------------------------------ new token rows
def add_tokens(pipe: StableDiffusionPipeline, tokens: list[str], init_word: str) -> list[int]:
    """Add ``tokens`` to the tokenizer and the text encoder, each row a copy of ``init_word``'s (one token)."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    vocab = tok.get_vocab()
    taken = [t for t in tokens if t in vocab or f"{t}</w>" in vocab]  # CLIP's words end in </w>
    if taken:
        raise ProbeError(
            f"token {taken[0]!r} is already in the tokenizer (a placeholder must be new)", "pass e.g. --token <new1>"
        )
    init = tok.encode(init_word, add_special_tokens=False)
    if len(init) != 1:
        raise ProbeError(f"class word {init_word!r} is {len(init)} tokens, not one", "use a one-token class word")
    if tok.add_tokens(tokens) != len(tokens):
        raise ProbeError(f"the tokenizer refused token {tokens[0]!r}", "pass another --token, e.g. <new1>")
    te.resize_token_embeddings(len(tok), mean_resizing=False)  # the new rows are overwritten next
    ids = tok.convert_tokens_to_ids(tokens)
    weight = te.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = weight[init[0]].clone()
    return ids


def only_rows(weight: torch.nn.Parameter, ids: list[int]) -> tuple:
    """(after_backward, after_step) that keep every row but ``ids`` as it is: zero their gradients (as
    train_custom_diffusion.py) and restore them after the step (as textual_inversion.py: AdamW's weight decay would
    shrink them)."""
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[ids] = False
    original = weight.detach().clone()

    def zero_grads() -> None:
        if weight.grad is not None:
            weight.grad[keep] = 0

    def restore() -> None:
        with torch.no_grad():
            weight[keep] = original[keep]

    return zero_grads, restore


def save_tokens(path: Path, token: str, rows: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file({token: rows.detach().cpu().contiguous()}, str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------ methods
def textual_inversion(
    pipe: StableDiffusionPipeline, concept: WorldConcept, lr: float, num_vectors: int, **_
) -> TrainingPlan:
    token = concept.token
    tokens = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
    ids = add_tokens(pipe, tokens, concept.class_word)
    weight = pipe.text_encoder.get_input_embeddings().weight.requires_grad_(True)
    zero_grads, restore = only_rows(weight, ids)
    prompt = replace(concept, token=" ".join(tokens)).train_prompt()

    def save(folder: Path) -> None:
        save_tokens(folder / TI_FILE, token, weight[min(ids) : max(ids) + 1])

    groups = [{"params": [weight], "lr": lr, "weight_decay": WEIGHT_DECAY}]
    return TrainingPlan(groups, prompt, True, save, zero_grads, restore, [pipe.text_encoder])


def custom_diffusion(pipe: StableDiffusionPipeline, concept: WorldConcept, lr: float, **_) -> TrainingPlan:
    from ..models.install import fresh_custom_diffusion

    (token_id,) = add_tokens(pipe, [concept.token], concept.class_word)
    weight = pipe.text_encoder.get_input_embeddings().weight.requires_grad_(True)
    zero_grads, restore = only_rows(weight, [token_id])
    unet = pipe.unet
    procs = fresh_custom_diffusion(unet)
    layers = [p for proc in procs.values() for p in proc.parameters()]
    unet.set_attn_processor(dict(procs))  # it pops from the dict it gets

    def save(folder: Path) -> None:
        unet.save_attn_procs(str(folder), weight_name=CD_FILE, safe_serialization=True)
        save_tokens(folder / f"{concept.token}.safetensors", concept.token, weight[token_id])

    groups = [{"params": [weight] + layers, "lr": lr, "weight_decay": WEIGHT_DECAY}]
    modules = [pipe.text_encoder, *procs.values()]
    return TrainingPlan(groups, concept.train_prompt(), True, save, zero_grads, restore, modules)


def dreambooth(
    pipe: StableDiffusionPipeline, concept: WorldConcept, lr: float, text_encoder: bool, **_
) -> TrainingPlan:
    groups = [{"params": list(pipe.unet.requires_grad_(True).parameters()), "lr": lr, "weight_decay": WEIGHT_DECAY}]
    trained = [pipe.unet]
    if text_encoder:
        params = list(pipe.text_encoder.requires_grad_(True).parameters())
        groups.append({"params": params, "lr": lr * TEXT_LR_FACTOR, "weight_decay": WEIGHT_DECAY})
        trained.append(pipe.text_encoder)

    def save(folder: Path) -> None:
        pipe.save_pretrained(str(folder), safe_serialization=True)

    return TrainingPlan(groups, concept.train_prompt(), text_encoder, save, trained=trained)


def lora(pipe: StableDiffusionPipeline, concept: WorldConcept, lr: float, rank: int, **_) -> TrainingPlan:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = pipe.unet
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]

    def save(folder: Path) -> None:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        type(pipe).save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)

    groups = [{"params": params, "lr": lr, "weight_decay": WEIGHT_DECAY}]
    return TrainingPlan(groups, concept.train_prompt(), False, save, trained=[unet])


PLANS = {
    "textual-inversion": textual_inversion,
    "custom-diffusion": custom_diffusion,
    "dreambooth": dreambooth,
    "lora": lora,
}
