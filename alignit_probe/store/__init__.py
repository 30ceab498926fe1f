"""The store: one xarray DataTree per recording, one branch per model (see ``layout``). Torch-free.

``open_store`` (one store), ``open_shards`` (one store or every shard of one job), ``merge_shards``, and the
readers ``models``, ``group``, ``kv_paths``, ``token_labels``, ``model_attrs``, ``store_attrs``."""

from .layout import (
    FORMAT,
    check_output,
    decode_attrs,
    encode_attrs,
    group,
    kv_paths,
    model_attrs,
    models,
    open_store,
    store_attrs,
    token_labels,
)

__all__ = [
    "FORMAT",
    "check_output",
    "decode_attrs",
    "encode_attrs",
    "group",
    "kv_paths",
    "model_attrs",
    "models",
    "open_store",
    "store_attrs",
    "token_labels",
]
