"""Handing freed memory back to the operating system between stages.

glibc keeps the heap that Python and torch free (models, optimizer state, activations) for the
process to reuse, so a process's resident memory only grows: the next stage's peak stacks on
what the last stage freed. A run that samples, scores, trains and evaluates in one process then
holds its training peak for the rest of the run. `malloc_trim` returns those pages.
"""

from __future__ import annotations

import ctypes
import gc
import sys


def return_freed_memory() -> None:
    """Collect what nothing refers to any more and give the freed heap back to the OS."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): the memory stays with the process
            pass
