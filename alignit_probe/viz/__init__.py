"""Figures and images (matplotlib and PIL imported when drawing): drift along the text path and over checkpoints
(``drift``), labeled image grids (``grid``), attention overlays (``overlay``)."""
