"""diffusers' and transformers' own progress bars and log warnings off while the toolkit loads or saves a model
for its own purposes (the toy model written, a stand-in training run), restored after; usable as a decorator."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Neither diffusers' nor transformers' progress bars nor their warnings while loading and saving (a tiny model
    loads and saves in a blink; ``save_attn_procs`` warns that the untrained attn1 processors, empty, are not
    written, as in the script's output)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = (diffusers_logging, transformers_logging)
    before = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libs]
    for lib in libs:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, (level, bars) in zip(libs, before):
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()


@functools.cache
def import_pipelines() -> None:
    """diffusers' SD/SDXL pipeline classes imported once, quietly: without torchvision (which this toolkit must not
    pull in) transformers logs two lines about its image processors when they are first imported."""
    with quiet_libraries():
        import diffusers

        _ = diffusers.StableDiffusionPipeline, diffusers.StableDiffusionXLPipeline
