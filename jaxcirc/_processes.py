"""Several processes (`jax.distributed`): files shared by all of them are written by one.

Every process runs the same script, so every process reaches a save. Under
`jax.distributed.initialize` (more than one process) process 0 alone writes, and every process
returns once it has: the processes then agree, in one collective, whether the write
succeeded, so a failure on process 0 is an error on every process (none waits forever for a
write that will not come). One process: the write runs as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np

T = TypeVar("T")


def written_by_one(write: Callable[[], T], what: str) -> T | None:
    """`write()` on process 0 alone; every process returns when it has (process 0 with its
    result, the others with `None`). A failure of process 0 is raised there and reported on
    the others as a `RuntimeError` naming `what`."""
    if jax.process_count() == 1:
        return write()
    from jax.experimental import multihost_utils

    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = write()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others know
            error = e
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))  # a barrier
    if error is not None:
        raise error
    if int(failed):
        raise RuntimeError(f"process 0 failed to write {what}; its error says why")
    return result


def checkpointer():
    """An orbax PyTree checkpointer that writes from this process alone (under several
    processes orbax would otherwise coordinate all of them; `written_by_one` runs it on 0)."""
    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.PyTreeCheckpointer()
    me = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    handler = ocp.PyTreeCheckpointHandler(multiprocessing_options=me)
    return ocp.Checkpointer(handler, multiprocessing_options=me)
