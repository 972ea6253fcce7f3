"""Backends by name. Heavy imports stay in each backend's module and happen only when chosen."""

from __future__ import annotations

import importlib

from star_gate.backends.base import Backend, Chat, SamplingParams

BACKENDS: dict[str, str] = {
    "transformers": "star_gate.backends.hf:TransformersBackend",
    "fake": "star_gate.backends.fake:FakeBackend",
}


def backend_class(name: str) -> type:
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose from {sorted(BACKENDS)}") from None
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["BACKENDS", "Backend", "Chat", "SamplingParams", "backend_class"]
