"""The one interceptor of ``torch.nn.functional.scaled_dot_product_attention``, shared by K/V recording (probing an
unknown processor), AlignIT's K/V injection and attention-map capture.

diffusers' attention processors call ``F.scaled_dot_product_attention`` through the module attribute, so replacing
that attribute for the duration of one processor call sees (and may change) exactly the query, key, value, mask and
scale that reach attention — whatever projections the processor used to make them. Blocks nest: an inner handler
receives, as ``sdpa``, the function the outer block installed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F

Handler = Callable[..., object]  # handler(sdpa, query, key, value, *args, **kwargs) -> attention output


class intercept_sdpa:  # noqa: N801 - used as a function-like context manager
    """Route every SDPA call made inside the block through ``handler(sdpa, query, key, value, *args, **kwargs)``;
    ``sdpa`` is the function in place before (call it to attend). Restored on exit, also on error.

    A class rather than a generator-based context manager: it runs once per attn2 call in AlignIT's hot path."""

    __slots__ = ("handler", "sdpa")

    def __init__(self, handler: Handler):
        self.handler = handler
        self.sdpa = None

    def __enter__(self) -> None:
        sdpa = self.sdpa = F.scaled_dot_product_attention
        handler = self.handler

        def routed(*args, **kwargs):
            return handler(sdpa, *args, **kwargs)

        F.scaled_dot_product_attention = routed

    def __exit__(self, *exc) -> None:
        F.scaled_dot_product_attention = self.sdpa


def recording(sink: list) -> Handler:
    """A handler that appends ``(query, key, value)`` of every call to ``sink`` and attends unchanged."""

    def handler(sdpa, query, key, value, *args, **kwargs):
        sink.append((query, key, value))
        return sdpa(query, key, value, *args, **kwargs)

    return handler
