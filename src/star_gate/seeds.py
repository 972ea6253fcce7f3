"""One way to derive a seed from a run's seed and the names of what it seeds."""

from __future__ import annotations

import zlib


def derive_seed(*parts: object) -> int:
    """A seed for (run seed, stage, iteration, chunk, sample, ...): the same in every process and
    on every rerun (Python's hash() is salted per process), and different for different parts."""
    return zlib.crc32("|".join(map(str, parts)).encode()) % (2**31)
