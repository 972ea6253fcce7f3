import resource
import subprocess
import sys
import textwrap

import pytest

from star_gate.memory import return_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def test_freed_heap_goes_back_to_the_os():
    # Small blocks live on the heap, and a block allocated after them pins its top, so freeing
    # them leaves the pages with the process until they are trimmed.
    blocks = [bytearray(4000) for _ in range(50_000)]  # about 200 MB
    for block in blocks:
        block[::512] = b"x" * len(block[::512])  # touch every page
    pin = [bytearray(64) for _ in range(1000)]
    holding = resident_mb()
    del blocks
    freed_but_kept = resident_mb()
    return_freed_memory()
    trimmed = resident_mb()
    assert pin
    assert freed_but_kept - trimmed > 150, (holding, freed_but_kept, trimmed)


# Blocks of 8 MB after a 20 MB one was freed, which by glibc's default raises the mmap threshold
# past them, so they come from the heap; a small block after them pins the heap's top.
FREE_MIDSIZE_BLOCKS = textwrap.dedent(
    """
    import resource, sys
    from star_gate.memory import keep_large_blocks_off_the_heap

    def resident_mb():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20

    if sys.argv[1] == "fixed":
        assert keep_large_blocks_off_the_heap()
    big = bytearray(20 << 20)
    del big
    blocks = [bytearray(8 << 20) for _ in range(20)]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    pin = bytearray(64)
    holding = resident_mb()
    del blocks
    print(holding - resident_mb())
    """
)


def freed_mb(threshold: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", FREE_MIDSIZE_BLOCKS, threshold],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def test_a_fixed_mmap_threshold_returns_midsize_blocks_when_freed():
    assert freed_mb("default") < 40  # glibc's rising threshold: they stay with the process
    assert freed_mb("fixed") > 120  # about 160 MB goes back at once, no trim needed


def test_peak_resident_memory_holds_the_peak():
    from star_gate.memory import peak_resident_mb

    block = bytearray(300 << 20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    holding = resident_mb()
    del block
    return_freed_memory()
    peak = peak_resident_mb()
    assert peak >= holding - 1 and peak - resident_mb() > 250, (holding, peak)
    # read, not reset: the kernel's own peak for the process (getrusage, /usr/bin/time) is intact
    kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert abs(peak_resident_mb() - kernel_peak) < 5, (peak, kernel_peak)


# bf16 products of 300 different shapes (as training one example at a time makes) under autocast,
# then the memory malloc still holds for the process (mallinfo2: in use, outside mmapped blocks).
MANY_SHAPES = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from star_gate.memory import bound_kernel_caches

    if sys.argv[1] == "bounded":
        bound_kernel_caches()  # after torch is imported: the caches read their size lazily

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    layer = torch.nn.Linear(256, 512)
    before = libc.mallinfo2().uordblks
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for rows in range(1, 301):
            layer(torch.randn(rows, 256))
    print((libc.mallinfo2().uordblks - before) / 2**20)
    """
)


def kept_by_many_shapes_mb(mode: str) -> float:
    run = subprocess.run(
        [sys.executable, "-c", MANY_SHAPES, mode], capture_output=True, text=True, check=True
    )
    return float(run.stdout.split()[-1])


def test_kernel_caches_stop_growing_with_new_shapes():
    default = kept_by_many_shapes_mb("default")
    if default < 5:
        pytest.skip(f"this CPU's bf16 products keep no kernel per shape ({default:.1f} MB)")
    bounded = kept_by_many_shapes_mb("bounded")
    assert bounded < default / 4, (default, bounded)
