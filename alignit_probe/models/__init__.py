"""Models in: baseline pipelines and customized models (pipeline directories, or artifacts applied to the baseline),
read safely and checked to have loaded (``load``, ``artifacts``, ``verify``), the embedded toy model (``toy``), and
what a pipeline's text encoders make of a prompt: every stage of each encoder and the denoiser's conditioning
(``encoder``), the learned token embeddings (``embeddings``)."""
