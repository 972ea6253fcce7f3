"""Secrets: which names hold one, and keeping their values out of what a run writes or prints.

API keys are read from the environment only (never from a config), so the names matter twice: a
config key named like a secret is refused with a pointer to the environment, and the value of every
environment variable named like one is replaced wherever a run would write or print it.
"""

from __future__ import annotations

import os
import re

# api_key, OPENAI_API_KEY, hf_token, HF_TOKEN, client_secret, PASSWORD; not max_new_tokens or
# tokenizer.
_SECRET_NAME = re.compile(
    r"(^|_)(api_?key|key|secret|password|passwd|credentials?|token)($|_)", re.IGNORECASE
)
_SHORTEST_SECRET = 8  # shorter values ("1", "true") would be replaced everywhere they occur


def is_secret_name(name: str) -> bool:
    """Whether a config key or environment variable of this name would hold a secret."""
    return bool(_SECRET_NAME.search(name))


def scrub_secrets(text: str) -> str:
    """Replace the value of every secret-named environment variable by '<$NAME>'."""
    for name, value in os.environ.items():
        if is_secret_name(name) and len(value) >= _SHORTEST_SECRET and value in text:
            text = text.replace(value, f"<${name}>")
    return text
