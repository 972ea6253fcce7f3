"""Backend lookup by name, sampling parameters and where model weights come from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from star_gate.backends import BACKENDS, SamplingParams, backend_class
from star_gate.backends.fake import FakeBackend
from star_gate.backends.models import bundled_embedder, cache_dir, resolve_model


def test_backend_class_by_name():
    assert backend_class("fake") is FakeBackend
    assert backend_class("transformers").__name__ == "TransformersBackend"


def test_unknown_backend_lists_choices():
    with pytest.raises(
        ValueError,
        match=r"unknown backend 'vllm9'; choose from \['fake', 'openai', 'transformers', 'vllm'\]",
    ):
        backend_class("vllm9")


def test_a_role_takes_every_registered_backend_and_no_other():
    from pydantic import ValidationError

    from star_gate.config import RoleConfig

    for name in BACKENDS:  # registering a backend is all a config needs to accept it
        assert RoleConfig.of(backend=name).backend == name
    with pytest.raises(
        ValidationError, match=r"unknown backend 'vllm9'; choose from \['fake', 'openai'"
    ):
        RoleConfig.of(backend="vllm9")


def test_importing_backends_does_not_import_torch_backends():
    """The registry stays lazy: the heavy module is loaded only when chosen."""
    import subprocess

    code = "import star_gate.backends, sys; print('star_gate.backends.hf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be at least 1"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ],
)
def test_sampling_params_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_resolve_model_passes_paths_and_hub_ids_through():
    assert resolve_model("/some/checkpoint") == "/some/checkpoint"
    assert resolve_model("org/model") == "org/model"


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STAR_GATE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("STAR_GATE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "star-gate"


def test_bundled_model_resolves_to_an_existing_cache_entry(monkeypatch, tmp_path):
    """A converted checkpoint in the cache is used as is (no conversion)."""
    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    (target / "config.json").write_text("{}")
    monkeypatch.setenv("STAR_GATE_CACHE", str(tmp_path))
    monkeypatch.setattr(
        "star_gate.backends.models.convert_gguf", lambda *a: pytest.fail("converted again")
    )
    assert resolve_model("bundled") == str(target)


def test_bundled_embedder_is_installed():
    assert (bundled_embedder() / "config.json").exists()
