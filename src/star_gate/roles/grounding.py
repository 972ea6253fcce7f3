"""Fact retrieval for the grounded roleplayer.

A persona is split into sentence-sized facts; for each question the m facts whose sentence
embeddings (all-MiniLM-L6-v2, mean pooled) are most similar to the question are handed to the
roleplayer model. A small model then cannot wander off into facts the persona does not have.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from star_gate.backends.models import bundled_embedder
from star_gate.roles.answers import asking_sentences

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def split_facts(description: str) -> list[str]:
    """Split a persona description into sentences, each taken as one fact."""
    return [s.strip() for s in _SENTENCE_END.split(description.strip()) if s.strip()]


def questions_in(turn: str) -> str:
    """The sentences of a turn that ask the person something (roles/answers.is_asking), joined;
    '' when none does. "Great idea! Try a DSLR. What do you like to shoot?" -> "What do you like
    to shoot?"; "Have you tried miso soup?" proposes, so it asks nothing."""
    return " ".join(asking_sentences(turn))


class FactRetriever:
    """Embed texts with a sentence encoder and pick the facts nearest to each question."""

    def __init__(self, model: str = "bundled", device: str = "cpu", batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        path = str(bundled_embedder()) if model == "bundled" else model
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm mean-pooled embeddings, one row per text (cached per text)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            enc = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            for text, row in zip(chunk, torch.nn.functional.normalize(pooled, dim=-1).cpu()):
                self._cache[text] = row
        return torch.stack([self._cache[t] for t in texts])

    def top_facts(self, question: str, facts: Sequence[str], m: int) -> list[str]:
        """The m facts most similar to the question, in their original order."""
        if m >= len(facts):
            return list(facts)
        similarity = self.embed(list(facts)) @ self.embed([question])[0]
        chosen = sorted(similarity.topk(m).indices.tolist())
        return [facts[i] for i in chosen]
