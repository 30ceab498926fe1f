"""The names every part of the toolkit agrees on (no torch): stages of the text path, token roles, metrics.

Stages, in data-flow order: ``token_embedding`` (input embeddings, before position embeddings), ``encoder_layer``
(hidden state after every text-encoder layer), ``encoder_output`` (what the pipeline hands the UNet, clip-skip
respected), ``pooled`` (SDXL only: the pooled text embedding that conditions the UNet's time embedding; one vector
per prompt, compared as the end token's, role ``special``), ``key`` / ``value`` (at every attn2 layer, as its
active processor computes them), and ``attention_map`` (cross-attention maps of generations). Roles: ``special``
(start/end), ``padding``, ``concept`` (modifier token and class word), ``context`` (every other word).

Layer labels of rows: the encoder layer index (``token_embedding``: none) for the only text encoder, or SDXL's
first; ``text_2.<i>`` (``text_2``) for SDXL's second; the attn2 module path for ``key`` / ``value``.
"""

TEXT_STAGES = ("token_embedding", "encoder_layer", "encoder_output")
POOLED = "pooled"
KV_STAGES = ("key", "value")
STAGES = TEXT_STAGES + (POOLED,) + KV_STAGES
TOKEN_STAGES = TEXT_STAGES + KV_STAGES  # stages with one vector per token
SECOND_ENCODER = "text_2"  # SDXL's second text encoder: its store group and its layers' label prefix
ATTENTION_STAGE = "attention_map"
ROLES = ("special", "padding", "concept", "context")
METRICS = ("cosine_distance", "relative_l2")
ATTENTION_METRICS = ("one_minus_pearson", "jensen_shannon", "one_minus_iou")
ROW_COLUMNS = ("model", "reference", "stage", "layer", "role", "metric", "value", "ci_low", "ci_high", "n")
BASELINE = "baseline"
DEFAULT_CUSTOM = "custom"
ALIGNIT = "alignit"
BLOCK_ORDER = ("down", "mid", "up")


def alignit_branch(model: str, n_custom: int) -> str:
    """The AlignIT branch of customized model ``model``: ``alignit`` with one customized model, else
    ``alignit-<model>``."""
    return ALIGNIT if n_custom == 1 else f"{ALIGNIT}-{model}"


def text_layer(group: str, layer: int | None) -> int | str | None:
    """The row label of a text encoder's layer (``layer`` None: its token embeddings): the index (None) for the
    first encoder, ``text_2.<i>`` (``text_2``) for SDXL's second."""
    if group != SECOND_ENCODER:
        return layer
    return group if layer is None else f"{group}.{layer}"


def is_text_layer(layer: int | str | None) -> bool:
    """Whether a row's layer label names a text-encoder layer (not an attn2 path)."""
    return not isinstance(layer, str) or layer == SECOND_ENCODER or layer.startswith(SECOND_ENCODER + ".")


def layer_order(layer: int | str | None) -> tuple:
    """Sort key of rows' layer labels within a stage: the first encoder's layers, the second's, attn2 paths in UNet
    order."""
    if not isinstance(layer, str):
        return (0, -1 if layer is None else layer)
    if is_text_layer(layer):
        return (1, int(layer.rpartition(".")[2]) if "." in layer else -1)
    return (2, *unet_order_key(layer))


def block_of(path: str) -> str:
    """``down``/``mid``/``up`` of an attn2 module path (``down_blocks.1.attentions.0…`` → ``down``)."""
    return path.split(".", 1)[0].replace("_blocks", "").replace("_block", "")


def unet_order_key(path: str) -> tuple:
    """Sort key that puts attn2 paths in UNet order: down blocks, mid block, up blocks; numerically within."""
    parts = path.split(".")
    block = block_of(path)
    nums = tuple(int(p) for p in parts if p.isdigit())
    return (BLOCK_ORDER.index(block) if block in BLOCK_ORDER else len(BLOCK_ORDER), nums, path)


def layer_label(layer: int | float | str | None) -> str:
    """The label ``compare`` prints for a row's layer: ``""`` where none applies, the encoder layer's index
    (``text_2.<i>`` for SDXL's second encoder), an attn2 path's short label (``down1.0``, ``mid.0``, ``up2.1.t1``).
    Layers read back as floats (a pandas column with nulls) label as their integers."""
    if layer is None or (isinstance(layer, float) and layer != layer):
        return ""
    if isinstance(layer, (int, float)):
        return str(int(layer))
    return short_layer(str(layer), strict=False)  # a label already short, or any other name, as it is


def short_layer(path: str, strict: bool = True) -> str:
    """A short label for an attn2 path: ``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` → ``down1.0``
    (``.t<k>`` added for transformer blocks past the first). Text-encoder labels (``text_2.3``) stay as they are;
    any other name (``strict=False``) as it is."""
    if is_text_layer(path):
        return path
    if not strict and (block_of(path) not in BLOCK_ORDER or not path.split(".", 1)[0].endswith(("_blocks", "_block"))):
        return path
    parts = path.split(".")
    nums = [p for p in parts if p.isdigit()]
    block = block_of(path)
    if block == "mid":
        label = "mid" + (f".{nums[0]}" if nums else "")
        rest = nums[1:]
    else:
        label = f"{block}{nums[0]}" + (f".{nums[1]}" if len(nums) > 1 else "")
        rest = nums[2:]
    if rest and rest[0] != "0":
        label += f".t{rest[0]}"
    return label
