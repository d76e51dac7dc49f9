"""A host-side progress bar that compiled code ticks through `jax.debug.callback`."""

from __future__ import annotations

import contextlib


class _Bar:
    current = None


def tick(*_) -> None:
    """Advance the open bar by one (a no-op when none is open); call it via
    `jax.debug.callback(tick, x)` from inside `jit`, `lax.map` or `scan`."""
    if _Bar.current is not None:
        _Bar.current.update(1)


@contextlib.contextmanager
def progress_bar(enabled: bool, **tqdm_kwargs):
    """Open a `tqdm` bar (`total`, `desc`, `unit`) for the duration of the block."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    _Bar.current = tqdm(**tqdm_kwargs)
    try:
        yield
    finally:
        _Bar.current.close()
        _Bar.current = None
