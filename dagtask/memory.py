"""Large submits and Python's cyclic garbage collector.

A 100,000-subtask submit allocates a few hundred thousand objects (expanded subtasks, rows)
while a template of as many models is alive. Each allocation burst triggers collections that
walk everything alive, which made up half of the expansion's time. None of those objects form
cycles, so nothing is gained by collecting while they are made: :func:`paused_gc` turns the
collector off for the duration of a large submit (reference counting still frees everything at
once) and back on after, unless it was already off.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

LARGE = 1_000
"""From how many subtasks a template's submit pauses the collector (fan-outs over a list of
hosts stay far below the sizes where it matters)."""


@contextmanager
def paused_gc(large: bool) -> Iterator[None]:
    """Pause the cyclic collector while the block runs, when ``large``.

    Another thread that allocates meanwhile only has its cycles collected a little later. A
    caller that had turned the collector off finds it off afterwards.
    """
    if not large or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
