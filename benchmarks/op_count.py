"""Counting the tensor operations a block of code dispatches (``bench_ops.py``, ``test_op_counts.py``)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpCount(TorchDispatchMode):
    """Counts the ATen operations dispatched inside the block (``with OpCount() as c: ...; c.n``)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))
