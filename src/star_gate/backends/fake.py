"""A deterministic fake backend for testing the pipeline without a model.

Generation returns canned text derived from the chat; log-probs reward completions whose words
appear in the prompt, so better conversations (ones that reveal persona facts) score higher, as
with a real model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from star_gate.backends.base import Chat, SamplingParams

_WORD = re.compile(r"[a-z]+")


class FakeBackend:
    """A deterministic stand-in for a model: replies and log-probs derived from the prompt's text, for fast tests."""

    def __init__(self, model: str = "fake", **_ignored):
        self.name = model
        self.calls = {"generate": 0, "logprobs": 0}

    def counters(self) -> dict[str, int]:
        """Work since the last call: none (Backend.counters)."""
        return {}  # it never cuts a prompt and calls no API

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """params.n replies per chat, derived from the chat's last message (Backend.generate)."""
        self.calls["generate"] += 1
        out = []
        for chat in chats:
            last = chat[-1]["content"]
            samples = []
            for i in range(params.n):
                digest = hashlib.sha256(f"{params.seed}|{i}|{last}".encode()).hexdigest()[:6]
                if chat[-1]["role"] == "assistant":  # an opening to continue
                    samples.append(f"what about you matters here ({digest})?")
                elif last.startswith("Facts about you:"):
                    samples.append(last.split("\n")[1].removeprefix("- "))
                elif "answer my original request" in last:
                    samples.append(f"Here is my tailored answer ({digest}).")
                else:
                    samples.append(f"Question {digest}: what about you matters here?")
            out.append(samples)
        return out

    def logprobs(self, chats: Sequence[Chat], completions: Sequence[str]) -> list[float]:
        """A log-prob per completion, derived from its text (Backend.logprobs)."""
        self.calls["logprobs"] += 1
        scores = []
        for chat, completion in zip(chats, completions):
            context = set(_WORD.findall(" ".join(m["content"].lower() for m in chat)))
            words = _WORD.findall(completion.lower())
            scores.append(-float(sum(1.0 if w in context else 3.0 for w in words)))
        return scores
