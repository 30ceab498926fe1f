"""The read side's computations (no torch): distances to the baseline per stage, layer and role, attention-map
divergences, and ``compare`` — a pandas DataFrame of the ``compare --json`` rows."""
