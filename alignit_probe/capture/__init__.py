"""Capture at the UNet's cross-attention: attn2 sites and how each processor projects K/V (``sites``), the one SDPA
interceptor (``sdpa``), conditional rows of guided batches (``guidance``), K/V injection (``inject``) and
cross-attention maps (``attention``). Processors are swapped and always restored."""
