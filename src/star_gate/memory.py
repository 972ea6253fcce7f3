"""Handing freed memory back to the operating system.

glibc keeps the heap that Python and torch free (models, optimizer state, activations) for the
process to reuse, so a process's resident memory only grows: the next stage's peak stacks on
what the last stage freed. Two things keep it down:

- Blocks above glibc's mmap threshold get their own mapping, unmapped when freed. By default
  the threshold rises to the size of each such block freed (up to 32 MB), after which tensors of
  every size come from the heap; training one example at a time, each a different length, then
  fragments it, and the demo's training grew from 2 GB to 6 GB resident. A fixed threshold
  (`keep_large_blocks_off_the_heap`, set by the CLI at start) stops that rise.
- `malloc_trim` returns the free pages of the heap: after models are released, after training,
  and after every training step (`return_freed_memory`, `trim_heap`).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20  # a training activation of one example is about this size


@functools.cache  # trim_heap runs after every training step: open the library once
def _glibc():
    """The C library when it is glibc, else None (musl, macOS: these calls do not apply)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def keep_large_blocks_off_the_heap(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold, so that every block above it is returned to the OS when freed.
    Returns whether it could (glibc only)."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))


def trim_heap() -> None:
    """Give the free pages of the heap back to the OS (cheap: no garbage collection)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def return_freed_memory() -> None:
    """Collect what nothing refers to any more and give the freed heap back to the OS."""
    gc.collect()
    trim_heap()
