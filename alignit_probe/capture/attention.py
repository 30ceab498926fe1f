"""Cross-attention maps per token (DAAM's global heat maps), captured exactly, whatever processor is active.

    with capture_attention(pipe, prompt_embeds, slices=AttentionSlices(per_layer=True)) as maps:
        pipe(prompt_embeds=prompt_embeds, num_inference_steps=30)   # negative_prompt_embeds or not
    ds = maps.to_dataset(token_strings(pipe.tokenizer, prompts))   # map (prompt, token, y, x), ...

How: every attn2 processor is wrapped (``attn.set_processor``; originals restored on exit, also on error). The
wrapper runs the original processor while ``F.scaled_dot_product_attention`` is intercepted and takes the exact
(query, key, mask, scale) that reached attention — so Custom Diffusion's own K/V, LoRA-wrapped projections and
processors that inject K/V (AlignIT) are all seen as they act. Processors that compute probabilities with
``attn.get_attention_scores`` instead (``AttnProcessor``, sliced ones) are caught there. Probabilities
softmax(Q Kᵀ · scale + mask) are recomputed in float32 for the *conditional rows only*, found by content
(``guidance.CondRows``), never as the second half of the batch; ``scale`` is what SDPA used (the ``scale``
argument if given, else 1/√head_dim, which is ``attn.scale`` for SD layers).

Aggregation is streaming (memory does not grow with steps): maps are summed over layers and steps on the latent
grid (bilinear: on each layer's native grid, upsampled once when read, ``native_sums``).
``AttentionSlices(aggregation=...)``:

* ``"bilinear"`` (default): mean over heads, then bilinear upsampling (``align_corners=False``, non-negative and
  mass-preserving in shape) from the layer's native h×w to the latent grid.
* ``"daam"`` (DAAM, Tang et al. 2023, ``daam/trace.py``): each head's map upsampled with bicubic interpolation
  (``align_corners=False``) to the latent grid, clamped at 0 (bicubic undershoots), then the mean over heads.
  DAAM sums each (layer, head) map over steps *before* it upsamples and clamps, and takes the mean over all
  (layer, head) pairs; here each step is upsampled and clamped as it comes (memory flat in steps) and layers are
  summed. Both agree exactly for one step, and for more wherever bicubic does not undershoot; with the same number
  of heads in every layer (SD1.x: 8) the sum over layers is DAAM's mean times the number of layers, so the
  normalized ``map`` is DAAM's global heat map (on the latent grid: 64×64 for SD1.5 at 512 px, like DAAM's).

``AttentionSlices(layers=...)``: None (every attn2 layer), a list of attn2 paths, or ``"daam"``: the layers DAAM
aggregates by default — every attn2 layer outside the UNet's mid block (DAAM's ``UNetCrossAttentionLocator`` with
``locate_middle_block=False``) whose map is not downsampled 8× from the latent grid at the UNet's default sample
size (DAAM skips ``factor == 8``); for SD1.x/SD2.x that is all down- and up-block layers (maps 64/32/16 at 512 px),
the mid block's 8×8 excluded. Only the chosen layers are wrapped and captured (``layers`` attribute).

The native h×w is inferred from the number of queries and the latent shape of the first UNet call (a forward
pre-hook on the UNet, removed on exit), so non-square images work. A *step* is one UNet forward inside the block.
Rows of several images of the same prompt are summed.

Slices (``AttentionSlices``): ``per_layer`` (``map_layer``), ``step_windows`` [start, stop) (``map_window``),
``per_head`` (``map_head``, latent grid), ``native`` (``map_native_<k>`` per layer, dims ``y_<h>``/``x_<w>``;
with ``per_head`` also ``map_native_head_<k>``; native maps are never upsampled). Enter ``capture_attention`` after
(inside) any context that swaps processors, so it wraps them. During capture, a customized processor's weights sit
one level deeper (``...attn2.processor.inner``) in the UNet's state dict. ``maps_dataset`` builds the Dataset.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import sites
from ..errors import ProbeError
from .guidance import CondRows
from .map_batches import Group, Pending, call_probabilities, probabilities, rows_of
from .map_options import AttentionSlices, daam_layers, select_layers
from .maps_dataset import maps_dataset
from .native_sums import NATIVE, add_grid, add_layer, upsampled
from .sdpa import intercept_sdpa

if TYPE_CHECKING:
    import xarray as xr
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.models.attention_processor import Attention
    from transformers import PreTrainedTokenizerBase

__all__ = ["AttentionSlices", "AttentionCollector", "capture_attention", "daam_layers", "token_strings"]


@dataclass
class _Call:
    """What one attention call in an attn2 layer saw."""

    kind: str  # "sdpa" (query, key, mask, scale) or "scores" (probabilities from get_attention_scores)
    tensors: tuple


@contextlib.contextmanager
def _intercept(attn, sink: list[_Call]):
    """Record every SDPA call, and every ``attn.get_attention_scores`` result, made inside the block."""
    scores = attn.get_attention_scores

    def spy_sdpa(sdpa, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        sink.append(_Call("sdpa", (query, key, attn_mask, scale, is_causal)))
        return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kw)

    def spy_scores(query, key, attention_mask=None):
        probs = scores(query, key, attention_mask)
        sink.append(_Call("scores", (probs,)))
        return probs

    # a plain function attribute, set and removed in the instance's dict (nn.Module's own setattr/delattr check
    # parameters, buffers and submodules first: this runs at every attn2 call)
    own = vars(attn).get("get_attention_scores")  # set by an enclosing capture, if any
    vars(attn)["get_attention_scores"] = spy_scores
    try:
        with intercept_sdpa(spy_sdpa):
            yield sink
    finally:
        if own is None:
            del vars(attn)["get_attention_scores"]
        else:
            vars(attn)["get_attention_scores"] = own


class AttentionCapture(nn.Module):
    """The wrapper put in place of an attn2 processor (a subclass per wrapped class mirrors its signature)."""

    def __init__(self, inner, index: int, collector: AttentionCollector):
        super().__init__()
        self.inner, self.index, self.collector = inner, index, collector

    def project_kv(self, attn: Attention, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V as the wrapped processor computes them (``sites.project_kv`` keeps working through the wrapper)."""
        return sites.project_kv(attn, self.inner, c)

    def _run(self, attn, hidden_states, args, kwargs):
        ehs = kwargs.get("encoder_hidden_states", args[0] if args else None)
        rows, which = self.collector.cond.match(ehs) if isinstance(ehs, torch.Tensor) else ([], [])
        if not rows:
            return self.inner(attn, hidden_states, *args, **kwargs)
        with _intercept(attn, []) as calls:
            out = self.inner(attn, hidden_states, *args, **kwargs)
        self.collector._add(self.index, type(self.inner).__name__, calls, ehs.shape[0], ehs.shape[1], rows, which)
        return out


_WRAPPERS: dict[type, type] = {}


def _wrap(inner, index: int, collector: AttentionCollector) -> AttentionCapture:
    cls = type(inner)
    if cls not in _WRAPPERS:

        def __call__(self, attn, hidden_states, *args, **kwargs):
            return self._run(attn, hidden_states, args, kwargs)

        with contextlib.suppress(TypeError, ValueError):  # Attention.forward filters kwargs by this signature
            __call__.__signature__ = inspect.signature(cls.__call__)
        _WRAPPERS[cls] = type(f"AttentionCapture_{cls.__name__}", (AttentionCapture,), {"__call__": __call__})
    return _WRAPPERS[cls](inner, index, collector)


class AttentionCollector:
    """Streaming sums of cross-attention maps; yielded by ``capture_attention``."""

    def __init__(self, unet, prompt_embeds: torch.Tensor, slices: AttentionSlices):
        if prompt_embeds.dim() != 3:
            raise ProbeError("prompt_embeds must be (prompt, token, channel)", "pass the tensor given to the pipeline")
        self.cond = CondRows(prompt_embeds)
        self.slices = slices
        self.prompts, self.tokens = prompt_embeds.shape[:2]
        if not sites.attn2_paths(unet):
            raise ProbeError("the UNet has no cross-attention (attn2) layers", "pass a text-conditioned pipeline")
        self.layers = select_layers(unet, slices.layers)
        if not self.layers:
            raise ProbeError("no attn2 layer matches the chosen map layers", "pass layers=None for all")
        self.heads = [unet.get_submodule(p).heads for p in self.layers]
        self.processors = [""] * len(self.layers)
        self.latent_hw: tuple[int, int] | None = None
        self.unet_calls = 0  # UNet forwards seen; the current step index is unet_calls - 1
        self.steps = 0  # UNet forwards in which conditional rows were captured
        self.calls = [0] * len(self.layers)  # captured attention calls per layer
        self.rows_captured = 0  # conditional rows captured, over all layers and steps
        self._counted = -1
        self._acc: dict[str, torch.Tensor] = {}
        self.native_hw: dict[int, tuple[int, int]] = {}  # layer index → its maps' native (h, w)
        self._index: dict[tuple, torch.Tensor] = {}
        self._pending = Pending()  # conditional (query, key) of calls computed together (``map_batches``)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _on_unet(self, module, args, kwargs):
        self._flush()  # the step before is complete
        sample = args[0] if args else kwargs.get("sample")
        hw = tuple(sample.shape[-2:])
        if self.latent_hw is not None and hw != self.latent_hw:
            raise ProbeError(
                f"latent size changed from {self.latent_hw} to {hw} inside one capture",
                "use one capture_attention block per image size",
            )
        self.latent_hw = hw
        self.unet_calls += 1

    def _grid(self, n: int) -> tuple[int, int]:
        if self.latent_hw is None:
            raise ProbeError("attn2 ran before any UNet forward", "run the pipeline (or the UNet) inside the block")
        lh, lw = self.latent_hw
        for f in (1, 2, 4, 8, 16, 32, 64):
            h, w = -(-lh // f), -(-lw // f)
            if h * w == n:
                return h, w
        raise ProbeError(f"cannot place {n} queries on the {lh}x{lw} latent grid", "use a UNet2DConditionModel")

    def _batchable(self, calls, batch: int, tokens: int) -> tuple | None:
        """(query, key, scale) of a call whose probabilities can wait for the end of the step: one SDPA call, no
        mask, bilinear aggregation; None otherwise."""
        if self.slices.aggregation != "bilinear" or len(calls) != 1 or calls[0].kind != "sdpa":
            return None
        q, k, mask, scale, causal = calls[0].tensors
        if (
            mask is not None
            or causal
            or q.dim() != 4
            or k.dim() != 4
            or k.shape[-2] != tokens
            or batch != len(q)
            or batch != len(k)
        ):
            return None
        return q, k, (scale if scale is not None else q.shape[-1] ** -0.5)

    def _add(self, i: int, name: str, calls, batch: int, tokens: int, rows, which) -> None:
        self.processors[i] = name
        self.calls[i] += 1
        self.rows_captured += len(rows)
        if self._counted != self.unet_calls:
            self._counted, self.steps = self.unet_calls, self.steps + 1
        step = self.unet_calls - 1
        with torch.no_grad():
            dev = calls[0].tensors[0].device
            idx = self._index.get((tuple(which), dev))
            if idx is None:
                idx = self._index[(tuple(which), dev)] = torch.tensor(which, device=dev)
            sdpa = self._batchable(calls, batch, tokens)
            if sdpa is None:
                probs = call_probabilities(name, calls, batch, tokens, rows)
                self._accumulate(i, probs, probs.mean(1), idx, step, grid=True)
                return
            q, k, scale = sdpa
            if rows == list(range(rows[0], rows[-1] + 1)):
                rows = slice(rows[0], rows[-1] + 1)  # a view, not a gather
            q, k = rows_of(q, batch, rows), rows_of(k, batch, rows)
            key = (tuple(q.shape), tuple(k.shape), q.dtype, q.device, scale, tuple(which), step)
            full = self._pending.add(key, i, q, k, scale)
            if full is not None:
                self._compute(full, idx, step)

    def _flush(self) -> None:
        """Compute every call still waiting (at the next UNet forward, and before the sums are read)."""
        with torch.no_grad():
            for key, group in self._pending.drain():
                self._compute(group, self._index[(key[5], key[3])], key[6])

    def _compute(self, group: Group, idx: torch.Tensor, step: int) -> None:
        """Add a group of waiting calls: their grid's sums at once, each layer's own sums (if sliced) one by one."""
        probs = probabilities(group)  # (layer, row, head, query, token)
        means = probs.mean(2)  # (layer, row, query, token)
        r, n, t = means.shape[1:]
        h, w = self.native_hw[group.layers[0]] if group.layers[0] in self.native_hw else self._native(group, n)
        add_grid(self._get, self.slices, idx, means.sum(0).transpose(-1, -2).reshape(r, t, h, w), step, self.prompts)
        if self.slices.per_layer or self.slices.per_head or self.slices.native:
            for j, i in enumerate(group.layers):
                self._accumulate(i, probs[j], means[j], idx, step, grid=False)

    def _native(self, group: Group, n: int) -> tuple[int, int]:
        hw = self._grid(n)
        for i in group.layers:
            self.native_hw.setdefault(i, hw)
        return hw

    def _accumulate(self, i: int, probs, means, idx, step: int, grid: bool) -> None:
        """Add layer ``i``'s call: ``probs`` (row, head, query, token) and their head means (row, query, token);
        ``grid``: also to the sums over layers (``map_raw``, windows)."""
        r, heads, n, t = probs.shape
        h, w = self.native_hw[i] if i in self.native_hw else self.native_hw.setdefault(i, self._grid(n))
        lh, lw = self.latent_hw
        sl = self.slices
        maps = means.transpose(-1, -2).reshape(r, t, h, w)  # native head mean
        P, L, H = self.prompts, len(self.layers), max(self.heads)
        if sl.aggregation == "bilinear":  # linear: summed on the native grid here, upsampled once when read
            if grid:
                add_grid(self._get, sl, idx, maps, step, P)
            add_layer(self._get, sl, i, idx, maps, probs, P)
        else:  # daam, per head: bicubic, clamped at 0 (DAAM's), then the head mean: upsampled call by call
            dev = probs.device
            heads_up = probs.transpose(-1, -2).reshape(r, heads * t, h, w)
            if (h, w) != (lh, lw):
                heads_up = F.interpolate(heads_up, (lh, lw), mode="bicubic", align_corners=False).clamp_(min=0)
            heads_up = heads_up.reshape(r, heads, t, lh, lw)
            maps_up = heads_up.mean(1)
            if sl.per_head:
                self._get("map_head", (P, L, H, t, lh, lw), dev)[:, i, :heads].index_add_(0, idx, heads_up)
            self._get("map_raw", (P, t, lh, lw), dev).index_add_(0, idx, maps_up)
            if sl.per_layer:
                self._get("map_layer", (P, L, t, lh, lw), dev)[:, i].index_add_(0, idx, maps_up)
            if sl.step_windows:
                acc = self._get("map_window", (P, len(sl.step_windows), t, lh, lw), dev)
                for wi, (a, b) in enumerate(sl.step_windows):
                    if a <= step < b:
                        acc[:, wi].index_add_(0, idx, maps_up)
        if sl.native:
            self._get(f"map_native_{i}", (P, t, h, w), probs.device).index_add_(0, idx, maps)
            if sl.per_head:
                head_maps = probs.transpose(-1, -2).reshape(r, heads, t, h, w)
                self._get(f"map_native_head_{i}", (P, H, t, h, w), probs.device)[:, :heads].index_add_(
                    0, idx, head_maps
                )

    def _get(self, name: str, shape: tuple, device: torch.device | None = None) -> torch.Tensor:
        acc = self._acc.get(name)
        if acc is None:
            acc = self._acc[name] = torch.zeros(shape, dtype=torch.float32, device=device)
        return acc

    # -- results -------------------------------------------------------------------------------------------------
    def accumulators(self) -> dict[str, torch.Tensor]:
        """The running sums on the latent grid, by variable name (their number and size do not depend on the
        number of steps); bilinear sums kept on native grids are upsampled here."""
        self._flush()
        out = {k: v for k, v in self._acc.items() if not k.startswith(NATIVE)}
        if len(out) < len(self._acc):
            out.update(upsampled(self._acc, self.latent_hw, self.prompts, self.heads, self.slices))
        return out

    def accumulator_bytes(self) -> int:
        """Bytes of the running sums held during capture."""
        self._flush()
        return sum(t.numel() * t.element_size() for t in self._acc.values())

    def to_dataset(
        self, token_strings: Sequence[str] | Sequence[Sequence[str]] | None = None, normalize_maps: str | None = "max"
    ) -> xr.Dataset:
        """The maps as an ``xr.Dataset`` (built by ``maps_dataset.maps_dataset``).

        ``map`` (prompt, token, y, x): the global map, each (prompt, token) map divided by its max over (y, x)
        (``normalize_maps="sum"``: by its sum; None: raw); ``map_raw``: the raw sum over layers and steps of
        head-mean probabilities (``aggregation="daam"``: of head means of clamped bicubic per-head maps). Slices,
        normalized the same way per map: ``map_layer`` (prompt, layer, token, y, x), ``map_window``
        (prompt, window, token, y, x), ``map_head`` (prompt, layer, head, token, y, x; NaN for heads a layer lacks),
        ``map_native_<k>`` (prompt, token, y_<h>, x_<w>) and ``map_native_head_<k>`` (prompt, head, token, y_<h>,
        x_<w>) with attr ``layer``. ``token_strings`` (one list, or one per prompt) becomes the ``token_text``
        coord. Attributes: ``aggregation`` (bilinear/daam), ``upsampling``, ``layers`` (the captured ones),
        ``layer_selection`` (all/daam/given), ``steps``, ``latent_size``, ``heads``, ``processors``, ...
        """
        return maps_dataset(self, token_strings, normalize_maps)


@contextlib.contextmanager
def capture_attention(
    pipe: StableDiffusionPipeline | UNet2DConditionModel,
    prompt_embeds: torch.Tensor,
    *,
    slices: AttentionSlices = AttentionSlices(),
) -> Iterator[AttentionCollector]:
    """Capture cross-attention maps of the conditional rows while the block runs ``pipe(prompt_embeds=...)``.

    ``pipe``: a diffusers pipeline (or a UNet). Yields an ``AttentionCollector``; see the module docstring.
    """
    unet = getattr(pipe, "unet", pipe)
    collector = AttentionCollector(unet, prompt_embeds, slices)
    originals: dict[str, object] = {}
    hook = unet.register_forward_pre_hook(collector._on_unet, with_kwargs=True)
    try:
        for i, path in enumerate(collector.layers):
            attn = unet.get_submodule(path)
            originals[path] = attn.processor
            attn.set_processor(_wrap(attn.processor, i, collector))
        try:
            yield collector
        except BaseException:
            collector._pending.clear()
            raise
        collector._flush()  # the last step's calls
    finally:
        for path, processor in originals.items():
            unet.get_submodule(path).set_processor(processor)
        hook.remove()


def token_strings(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[str]]:
    """The token strings each prompt is encoded as (padded to the tokenizer's max length), for ``to_dataset``."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    return [tokenizer.convert_ids_to_tokens(row) for row in ids.input_ids]
