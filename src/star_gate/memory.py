"""Handing freed memory back to the operating system.

glibc keeps the heap that Python and torch free (models, optimizer state, activations) for the
process to reuse, so a process's resident memory only grows: the next stage's peak stacks on
what the last stage freed. Three things keep it down (`limit_memory_growth` sets the first two,
as each process starts):

- Blocks above glibc's mmap threshold get their own mapping, unmapped when freed. By default
  the threshold rises to the size of each such block freed (up to 32 MB), after which tensors of
  every size come from the heap; training one example at a time, each a different length, then
  fragments it, and the demo's training grew from 2 GB to 6 GB resident. A fixed threshold
  (`keep_large_blocks_off_the_heap`, set by the CLI at start) stops that rise.
- oneDNN, which runs bf16 matrix products on the CPU, builds a kernel for every new input shape
  and keeps up to 1024 of them, in PyTorch's cache (LRU_CACHE_CAPACITY) and in oneDNN's own
  (ONEDNN_PRIMITIVE_CACHE_CAPACITY). Training one example at a time, every length is a new
  shape: the demo's training held 40 MB more after each step, and its peak rose from 3.7 GB to
  4.3 GB in one epoch. 32 entries hold every shape of one example's forward and backward
  (`bound_kernel_caches`); one epoch then took 112 s instead of 129.
- `malloc_trim` returns the free pages of the heap: after models are released, after training,
  and after every training step (`return_freed_memory`, `trim_heap`).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import sys

KERNEL_CACHES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
KERNEL_CACHE_ENTRIES = 32
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


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> None:
    """Keep at most `entries` oneDNN kernels in each cache, unless the environment already sets
    it. Both caches read their size when first used, so this works until the first bf16 product."""
    for name in KERNEL_CACHES:
        os.environ.setdefault(name, str(entries))


def limit_memory_growth() -> None:
    """What every process of a run sets first: the fixed mmap threshold and bounded kernel caches."""
    keep_large_blocks_off_the_heap()
    bound_kernel_caches()


def trim_heap() -> None:
    """Give the free pages of the heap back to the OS (cheap: no garbage collection)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def return_freed_memory() -> None:
    """Collect what nothing refers to any more and give the freed heap back to the OS."""
    gc.collect()
    trim_heap()


def peak_resident_mb() -> float | None:
    """This process's peak resident memory so far, in MB, or None where /proc cannot tell (not
    Linux). Read, never reset: resetting the kernel's high-water mark (clear_refs) would also
    reset what `getrusage` and `/usr/bin/time` report for the process."""
    try:
        with open("/proc/self/status") as status:
            peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None
    return round(peak_kb / 1024, 1)
