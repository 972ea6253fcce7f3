"""The one protocol every backend implements: batched chat generation and completion log-probs.

Both methods take a list and return a list in the same order, so stages can batch freely and a
vLLM or OpenAI-compatible backend can replace the transformers one without any stage changing.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Message = dict[str, str]
Chat = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    """How replies are sampled: n per chat, temperature (0: greedy), nucleus mass, length, seed."""

    n: int = 1
    temperature: float = 0.9  # 0 means greedy decoding
    top_p: float = 0.9
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError("SamplingParams.n must be at least 1")
        if self.temperature < 0:
            raise ValueError("SamplingParams.temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("SamplingParams.top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("SamplingParams.max_new_tokens must be at least 1")


@runtime_checkable
class Backend(Protocol):
    """A model that serves one or more roles."""

    name: str

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """Return params.n sampled assistant replies for each chat, in input order. On the
        backends that can serve a questioner (transformers, vLLM), a chat that ends with an
        assistant message is continued: its replies are what follows that message."""
        ...

    def logprobs(self, chats: Sequence[Chat], completions: Sequence[str]) -> list[float]:
        """Return log p(completion | chat) for each pair: the sum over the completion's tokens only."""
        ...

    def counters(self) -> dict[str, int]:
        """The work counted since the previous call: prompts cut to fit the context
        ("truncated_prompts"), and an API backend's calls, retries, cache hits and tokens. The
        pipeline stores them with each finished stage."""
        ...


class WorkCounter:
    """A backend's counts of its work: running totals, and what counters() has not yet reported.
    Safe to add to from several threads (an API backend's requests)."""

    def __init__(self, *names: str):
        self.names = names  # always reported, zero or not
        self.totals: Counter[str] = Counter()
        self._unreported: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, **amounts: int) -> None:
        """Count work done (names: truncated_prompts, api_calls, ...)."""
        with self._lock:
            self.totals.update(amounts)
            self._unreported.update(amounts)

    def take(self) -> dict[str, int]:
        """What was counted since the last take, every name included."""
        with self._lock:
            counts = {name: self._unreported[name] for name in self.names} | dict(self._unreported)
            self._unreported.clear()
        return counts
