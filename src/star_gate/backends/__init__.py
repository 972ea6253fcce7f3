"""Backends by name. Heavy imports stay in each backend's module and happen only when chosen."""

from __future__ import annotations

import importlib

from star_gate.backends.base import Backend, Chat, SamplingParams

BACKENDS: dict[str, str] = {
    "transformers": "star_gate.backends.hf:TransformersBackend",
    "fake": "star_gate.backends.fake:FakeBackend",
    "openai": "star_gate.backends.openai_compat:OpenAIBackend",
    "vllm": "star_gate.backends.vllm_backend:VLLMBackend",  # optional extra: star-gate[vllm]
}

# Backends that hold no model in this process (a server does): their clients stay loaded while
# training needs the memory (Players.release_local_models).
REMOTE_BACKENDS = frozenset({"openai"})

# A backend's checks before a run (a package, an API key, a server's log-probs): `preflight(role,
# label, config, cache_path)` in its module, raising ConfigError. Backends without any are absent.
PREFLIGHTS: dict[str, str] = {
    "openai": "star_gate.backends.openai_compat:preflight",
    "vllm": "star_gate.backends.vllm_backend:preflight",
}


def _resolve(spec: str):
    module_name, name = spec.split(":")
    return getattr(importlib.import_module(module_name), name)


def preflight_role(role, label: str, config, cache_path=None) -> None:
    """Run the checks the role's backend registered (PREFLIGHTS), if any."""
    if role.backend in PREFLIGHTS:
        _resolve(PREFLIGHTS[role.backend])(role, label, config, cache_path)


def backend_class(name: str) -> type:
    """The class registered under a backend name (imported on first use)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {sorted(BACKENDS)}")
    return _resolve(BACKENDS[name])


def load_backend(role, model: str | None = None, progress: bool = True, cache_path=None) -> Backend:
    """The backend a role config names (`role.backend`), serving `model` or the role's model.

    A backend class with `from_role` reads its own fields from the role config (an API backend's
    server, key variable, retries); `cache_path` is where it may keep answers across runs.
    """
    cls = backend_class(role.backend)
    if hasattr(cls, "from_role"):
        return cls.from_role(role, model or role.model, progress, cache_path)
    return cls(model=model or role.model, max_context=role.max_context, progress=progress)


def role_sampling(role) -> SamplingParams:
    """The sampling settings a role config gives (temperature, top_p, max_new_tokens)."""
    return SamplingParams(
        temperature=role.temperature, top_p=role.top_p, max_new_tokens=role.max_new_tokens
    )


__all__ = [
    "BACKENDS",
    "PREFLIGHTS",
    "REMOTE_BACKENDS",
    "Backend",
    "Chat",
    "SamplingParams",
    "backend_class",
    "load_backend",
    "preflight_role",
    "role_sampling",
]
