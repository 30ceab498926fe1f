"""The names every part of the toolkit agrees on (no torch): stages of the text path, token roles, metrics.

Stages, in data-flow order: ``token_embedding`` (input embeddings, before position embeddings), ``encoder_layer``
(hidden state after every text-encoder layer), ``encoder_output`` (what the pipeline hands the UNet, clip-skip
respected), ``key`` / ``value`` (at every attn2 layer, as its active processor computes them), and
``attention_map`` (cross-attention maps of generations). Roles: ``special`` (start/end), ``padding``, ``concept``
(modifier token and class word), ``context`` (every other word).
"""

STAGES = ("token_embedding", "encoder_layer", "encoder_output", "key", "value")
TEXT_STAGES = STAGES[:3]
KV_STAGES = STAGES[3:]
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


def block_of(path: str) -> str:
    """``down``/``mid``/``up`` of an attn2 module path (``down_blocks.1.attentions.0…`` → ``down``)."""
    return path.split(".", 1)[0].replace("_blocks", "").replace("_block", "")


def unet_order_key(path: str) -> tuple:
    """Sort key that puts attn2 paths in UNet order: down blocks, mid block, up blocks; numerically within."""
    parts = path.split(".")
    block = block_of(path)
    nums = tuple(int(p) for p in parts if p.isdigit())
    return (BLOCK_ORDER.index(block) if block in BLOCK_ORDER else len(BLOCK_ORDER), nums, path)


def short_layer(path: str) -> str:
    """A short label for an attn2 path: ``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` → ``down1.0``
    (``.t<k>`` added for transformer blocks past the first)."""
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
