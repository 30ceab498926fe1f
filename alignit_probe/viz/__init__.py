"""Figures, images and the HTML report (matplotlib, seaborn and PIL imported when drawing): drift along the text path
and over checkpoints (``drift``), labeled image grids (``grid``), attention overlays (``overlay``); the report's
figures (``figures`` shared look, ``stages`` divergence per stage and per attn2 layer, ``tokens`` token heatmaps and
embedding projection, ``attention`` map grids), its sections (``sections``) and the page itself (``report``, Jinja2
template in ``templates/``)."""
