"""Crash points for fault-injection tests: die exactly as `kill -9` would, at a named place.

Set STAR_GATE_FAULT to one of these and the process sends itself SIGKILL on reaching it, leaving
the run directory as a real crash there would:

    mid_write:<path suffix>     half of the file is written to its temporary name (e.g.
                                mid_write:eval/controls.jsonl, mid_write:manifest.json)
    before_mark:<stage key>     the stage's output is in place, the manifest does not list it yet
    after_mark:<stage key>      the manifest lists the stage (e.g. between two simulation chunks)
    before_rename:<stage key>   a trained checkpoint is complete in checkpoint.partial, not renamed

Unset, which is always the case outside tests, a crash point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "STAR_GATE_FAULT"


def _die() -> None:
    kill = getattr(signal, "SIGKILL", None)
    if kill is None:  # Windows has no SIGKILL; an immediate exit skips cleanup just the same
        os._exit(137)
    os.kill(os.getpid(), kill)


def crash_point(kind: str, name: str) -> None:
    """Die here if STAR_GATE_FAULT is exactly '<kind>:<name>'."""
    if os.environ.get(FAULT_ENV) == f"{kind}:{name}":
        _die()


def crash_point_for_path(kind: str, path: str) -> None:
    """Die here if STAR_GATE_FAULT is '<kind>:<suffix>' and the path ends with that suffix
    at a folder boundary ('controls.jsonl' matches 'run/eval/controls.jsonl', 'trols.jsonl' not)."""
    wanted = os.environ.get(FAULT_ENV, "")
    prefix = f"{kind}:"
    if wanted.startswith(prefix):
        suffix = wanted[len(prefix) :]
        if path == suffix or path.endswith("/" + suffix):
            _die()
