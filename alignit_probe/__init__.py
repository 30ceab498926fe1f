"""alignit-probe: where along the text path a customized diffusion model drifts from its baseline; AlignIT."""

__version__ = "0.1.0"
