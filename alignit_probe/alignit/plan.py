"""AlignIT as pure functions: which token's K/V comes from where, and the infused K/V.

For a prompt with concepts ("photo of a <new1> cat on the beach"), every token outside the concept spans — context,
start/end, padding — takes the *baseline* model's K/V on the prompt without modifiers ("photo of a cat on the
beach"); each concept span takes the *customized* model's K/V on a short dummy prompt ("photo of a <new1> cat").
Spans may differ in length: the sequence is rebuilt in the customized prompt's token order, context and special tokens
keep their order, and the length stays at the encoder context by trimming padding or adding padding taken from the
baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ProbeError
from ..schema import BASELINE
from ..text.concepts import Concept, TokenizedPrompt, align_positions, tokenize_pair

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import PreTrainedTokenizerBase

DEFAULT_TEMPLATE = "photo of a {concept}"


@dataclass
class Plan:
    """The AlignIT token sequence of one prompt: its labels, and where each position's K/V comes from."""

    tokens: TokenizedPrompt  # ids/tokens/roles/labels; ref_index points into the baseline prompt
    source: list[int | str]  # BASELINE (the baseline's prompt) or the index of the concept whose dummy prompt it is
    position: list[int]  # position within that source prompt
    dropped: int = 0


def dummy_prompt(template: str, concept: Concept) -> str:
    if "{concept}" not in template:
        raise ProbeError(
            f"dummy template {template!r} has no {{concept}} placeholder", "write it like 'photo of a {concept}'"
        )
    text = template.replace("{concept}", " ".join(x for x in (concept.token, concept.class_word) if x))
    if concept.token not in text:
        raise ProbeError(
            f"dummy prompt {text!r} lacks the concept token {concept.token!r}", "keep {concept} in the template"
        )
    return text


def tokenize_dummies(
    custom_pipe: StableDiffusionPipeline,
    baseline_tokenizer: PreTrainedTokenizerBase,
    concepts: list[Concept],
    template: str = DEFAULT_TEMPLATE,
) -> dict[int, TokenizedPrompt]:
    """The customized tokenization of each concept's dummy prompt (its first concept span is what AlignIT uses)."""
    dummies = {}
    for c, concept in enumerate(concepts):
        dt, _ = tokenize_pair(dummy_prompt(template, concept), custom_pipe, baseline_tokenizer, [concept])
        if not dt.spans.get(0):
            raise ProbeError(f"dummy prompt {dt.text!r} lost its concept span to truncation", "shorten the template")
        dummies[c] = dt
    return dummies


def alignit_plan(
    custom: TokenizedPrompt,
    baseline: TokenizedPrompt,
    dummies: dict[int, TokenizedPrompt],
    end_from: int | None = None,
) -> Plan:
    """Rebuild the sequence: the customized prompt's order, baseline tokens outside spans, dummy spans inside. With
    ``end_from`` (a concept index), the end token and the padding come from that concept's dummy prompt instead of
    the baseline (in a causal encoder they summarise the whole prompt, so they carry the concept too)."""
    n = len(baseline.ids)
    eos_c = custom.label.index(("eos",))
    spans = custom.spans
    first_of = {pos[0]: occ for occ, pos in spans.items()}
    content: list[tuple[int, int, tuple]] = []
    for pos in range(1, eos_c):
        if custom.role[pos] == "context":
            content.append((BASELINE, custom.ref_index[pos], custom.label[pos]))
        elif pos in first_of:
            occ = first_of[pos]
            c = custom.concept[pos]
            content += [(c, d, ("concept", occ, j)) for j, d in enumerate(dummies[c].spans[0])]
    room = n - 2
    dropped = max(0, len(content) - room)
    content = content[:room]
    end = baseline if end_from is None else dummies[end_from]
    end_source = BASELINE if end_from is None else end_from
    pads = [p for p, r in enumerate(end.role) if r == "padding"]
    fill = pads[-1] if pads else end.label.index(("eos",))
    n_pad = room - len(content)
    pad_src = (pads + [fill] * n_pad)[:n_pad]
    source = [BASELINE] + [s for s, _, _ in content] + [end_source] * (1 + n_pad)
    position = [0] + [p for _, p, _ in content] + [end.label.index(("eos",))] + pad_src
    label = [("bos",)] + [lab for _, _, lab in content] + [("eos",)] + [("pad", j) for j in range(n_pad)]

    def pick(attr):
        return [getattr(baseline if s == BASELINE else dummies[s], attr)[p] for s, p in zip(source, position)]

    in_span = [s != BASELINE and lab[0] == "concept" for s, lab in zip(source, label)]
    concept = [s if span else -1 for s, span in zip(source, in_span)]
    role = ["concept" if span else r for span, r in zip(in_span, pick("role"))]
    tp = TokenizedPrompt(custom.text, pick("ids"), pick("tokens"), role, concept, label, dropped)
    tp.ref_index = align_positions(tp, baseline)
    return Plan(tp, source, position, dropped)


def infuse(plan: Plan, baseline: torch.Tensor, dummies: dict[int, torch.Tensor]) -> torch.Tensor:
    """K (or V) of the AlignIT sequence: ``baseline`` (token, channel) outside spans, ``dummies[c]`` inside."""
    order = [BASELINE] + sorted(dummies)
    stacked = torch.stack([baseline] + [dummies[c] for c in order[1:]])
    src = torch.tensor([order.index(s) for s in plan.source], device=baseline.device)
    pos = torch.tensor(plan.position, device=baseline.device)
    return stacked[src, pos]


def infuse_index(plans: list[Plan], order: list[int], device: torch.device | None = None) -> torch.Tensor:
    """(2, prompt, token) gather index of ``infuse_batch``: rows into [baselines of the plans, then the dummies of
    concepts ``order``], positions. The same for every attn2 site and for K and V: build it once."""
    n = len(plans)
    row = [[p if s == BASELINE else n + order.index(s) for s in plan.source] for p, plan in enumerate(plans)]
    return torch.tensor([row, [plan.position for plan in plans]]).to(device)


def infuse_batch(
    plans: list[Plan], baseline: torch.Tensor, dummies: dict[int, torch.Tensor], index: torch.Tensor | None = None
) -> torch.Tensor:
    """``infuse`` for every plan at once: ``baseline`` (prompt, token, channel) holds each plan's baseline K (or V),
    ``dummies[c]`` (token, channel) concept c's dummy; one gather for all prompts (``index``: ``infuse_index``,
    built here when not given). Equal, element for element, to stacking ``infuse`` per prompt."""
    order = sorted(dummies)
    table = torch.cat([baseline] + [dummies[c][None] for c in order])  # rows: prompts, then dummies
    idx = infuse_index(plans, order, baseline.device) if index is None else index
    return table[idx[0], idx[1]]


def infuse_stacked(baseline: torch.Tensor, dummies: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``infuse_batch`` of many attn2 sites of one width at once: ``baseline`` (site, prompt, token, channel),
    ``dummies`` (site, concept, token, channel) in ``infuse_index``'s concept order; returns (site, prompt, token,
    channel), each site equal, element for element, to its own ``infuse_batch``."""
    table = torch.cat([baseline, dummies], dim=1)  # rows: prompts, then dummies
    return table[:, index[0], index[1]]


def partner_positions(
    plans: list[Plan], others: list[TokenizedPrompt], device: torch.device | None = None
) -> torch.Tensor:
    """(prompt, token) position in ``others`` of each plan position's role-aligned partner, −1 where none."""
    return torch.tensor([align_positions(plan.tokens, other) for plan, other in zip(plans, others)]).to(device)


def partners_batch(
    plans: list[Plan], others: list[TokenizedPrompt], kv: torch.Tensor, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``gather_onto`` for every plan at once: ``kv`` (prompt, token, channel) of prompts ``others`` moved onto the
    plans' positions, and the (prompt, token) mask of positions that have a partner (``positions``:
    ``partner_positions``, built here when not given)."""
    pos = partner_positions(plans, others, kv.device) if positions is None else positions
    rows = torch.arange(len(plans), device=kv.device)[:, None]
    return kv[rows, pos.clamp(min=0)], pos >= 0


def gather_onto(plan: Plan, other: TokenizedPrompt, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``kv`` (token, channel) of prompt ``other`` moved onto the plan's positions (role-aligned), and a mask of the
    positions that have a partner."""
    idx = torch.tensor(align_positions(plan.tokens, other), device=kv.device)
    return kv[idx.clamp(min=0)], idx >= 0


def blend(alignit_kv: torch.Tensor, custom_kv: torch.Tensor, has_partner: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·AlignIT + (1−α)·customized (α = 1: the paper, returned unchanged); positions without a partner stay AlignIT.
    ``has_partner`` has the tokens' shape ((token,) or (prompt, token))."""
    check_alpha(alpha)
    if alpha == 1.0:
        return alignit_kv
    mixed = alpha * alignit_kv + (1.0 - alpha) * custom_kv
    return torch.where(has_partner[..., None], mixed, alignit_kv)


def check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ProbeError(f"alpha must be a number, not {alpha!r}", "pass --alpha (alpha=) between 0 and 1")
    if not 0.0 <= alpha <= 1.0:
        raise ProbeError(f"alpha {alpha} is outside [0, 1]", "pass --alpha between 0 (customized) and 1 (AlignIT)")
