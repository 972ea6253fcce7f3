import resource
import sys

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
