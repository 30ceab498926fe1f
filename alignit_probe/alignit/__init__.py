"""AlignIT: which token's K/V comes from where (``plan``, pure), the infused K/V and injection on real pipelines
(``engine``), generation (``generation``), and K/V semantic control (``swap``)."""
