"""The one interceptor of ``torch.nn.functional.scaled_dot_product_attention``, shared by K/V recording (probing an
unknown processor), AlignIT's K/V injection and attention-map capture.

diffusers' attention processors call ``F.scaled_dot_product_attention`` through the module attribute, so replacing
that attribute for the duration of one processor call sees (and may change) exactly the query, key, value, mask and
scale that reach attention — whatever projections the processor used to make them. Blocks nest: an inner handler
receives, as ``sdpa``, the function the outer block installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch.nn.functional as F

Handler = Callable[..., object]  # handler(sdpa, query, key, value, *args, **kwargs) -> attention output


@contextlib.contextmanager
def intercept_sdpa(handler: Handler) -> Iterator[None]:
    """Route every SDPA call made inside the block through ``handler(sdpa, query, key, value, *args, **kwargs)``;
    ``sdpa`` is the function in place before (call it to attend). Restored on exit, also on error."""
    sdpa = F.scaled_dot_product_attention

    def routed(*args, **kwargs):
        return handler(sdpa, *args, **kwargs)

    F.scaled_dot_product_attention = routed
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def recording(sink: list) -> Handler:
    """A handler that appends ``(query, key, value)`` of every call to ``sink`` and attends unchanged."""

    def handler(sdpa, query, key, value, *args, **kwargs):
        sink.append((query, key, value))
        return sdpa(query, key, value, *args, **kwargs)

    return handler
