"""alignit-probe: where along the text path a customized diffusion model drifts from its baseline; AlignIT.

The front door (every name loads lazily, so the read side — ``open_store`` and ``compare`` — imports no torch)::

    from alignit_probe import Concept, Probe, compare, open_store

``Probe`` (models, record, AlignIT images, attention maps, K/V swap), ``Concept``, ``open_store``, ``open_shards``,
``merge_shards``, ``compare`` (pandas DataFrame of ``compare --json`` rows), ``layer_label`` (the short attn2 labels
``compare`` prints), ``token_text`` / ``token_texts`` (``token_str`` labels as written), ``capture_attention``,
``AlignITOptions``, ``AttentionSlices``, ``ProbeError``, ``ProbeWarning``, and the embedded toy model
(``build_toy``, ``write_toy_custom_diffusion``).

Layers, bottom to top (a module imports from its own layer and the ones below, never above; ``tests/unit/
test_layers.py`` checks every import, those inside functions too): errors → schema → text → capture → models →
arguments → store → outputs → analysis → alignit → record → probe → evaluation → world → viz → cli. ``text``
tokenizes and labels prompts and knows no model; ``capture`` holds the instruments (hooks on diffusers' attention
modules) and knows no model either; ``models`` loads pipelines and customizations and runs their text encoders; the
read side (``store``, ``analysis``) imports no torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"
LAYERS = (  # as the docstring declares them
    "errors",
    "schema",
    "text",
    "capture",
    "models",
    "arguments",
    "store",
    "outputs",
    "analysis",
    "alignit",
    "record",
    "probe",
    "evaluation",
    "world",
    "viz",
    "cli",
)

_EXPORTS = {
    "Probe": "probe",
    "Concept": "text.concepts",
    "open_store": "store.layout",
    "open_shards": "store.shards",
    "merge_shards": "store.shards",
    "layer_label": "schema",
    "token_text": "text.byte_level",
    "token_texts": "text.byte_level",
    "compare": "analysis.compare",
    "capture_attention": "capture.attention",
    "AttentionSlices": "capture.attention",
    "AlignITOptions": "alignit.engine",
    "ProbeError": "errors",
    "ProbeWarning": "errors",
    "build_toy": "models.toy",
    "write_toy_custom_diffusion": "models.toy",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
