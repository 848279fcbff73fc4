"""Progress bars: headway shows its own; Hugging Face's bars for small internal steps are hidden."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' and datasets' progress bars (e.g. "Loading weights", "Generating
    train split") for the duration; restore their previous state afterwards."""
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (ds_logging, tf_logging)]
    for lib, _ in states:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()
