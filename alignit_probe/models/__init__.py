"""Models in: baseline pipelines and customized models (pipeline directories, or artifacts applied to the baseline),
read safely and checked to have loaded (``load``, ``artifacts``, ``verify``), and the embedded toy model (``toy``)."""
