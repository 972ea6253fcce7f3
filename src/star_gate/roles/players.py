"""The players of the game: a questioner and two kinds of roleplayer, each bound to a backend.

A stage talks to these objects only; which backend (and model) serves a player is the config's
business. Every method is batched: a list in, a list out, in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from star_gate.backends.base import Backend, SamplingParams
from star_gate.data.records import Conversation, Persona
from star_gate.roles import views
from star_gate.roles.grounding import FactRetriever, split_facts
from star_gate.roles.prompts import PromptTemplate


def first_paragraph(text: str) -> str:
    """Keep one turn's worth of text: small models often run on into a fake next turn."""
    return text.strip().split("\n\n")[0].strip()


@dataclass
class Questioner:
    backend: Backend
    template: PromptTemplate
    params: SamplingParams

    def ask(self, tasks: Sequence[str], conversations: Sequence[Conversation], seed: int) -> list[str]:
        chats = [views.questioner_chat(self.template, t, c) for t, c in zip(tasks, conversations)]
        replies = self.backend.generate(chats, replace(self.params, n=1, seed=seed))
        return [first_paragraph(r[0]) for r in replies]

    def respond(
        self, tasks: Sequence[str], conversations: Sequence[Conversation], max_new_tokens: int
    ) -> list[str]:
        """Final answers at temperature 0, with the task repeated after the conversation."""
        chats = [views.final_answer_chat(self.template, t, c) for t, c in zip(tasks, conversations)]
        greedy = replace(self.params, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        return [r[0].strip() for r in self.backend.generate(chats, greedy)]


@dataclass
class PersonaRoleplayer:
    """Sees the whole persona and the dialogue; the paper's roleplayer."""

    backend: Backend
    template: PromptTemplate
    params: SamplingParams

    def answer(
        self,
        personas: Sequence[Persona],
        tasks: Sequence[str],
        conversations: Sequence[Conversation],
        seed: int,
    ) -> list[str]:
        chats = [
            views.roleplayer_chat(self.template, p, t, c) for p, t, c in zip(personas, tasks, conversations)
        ]
        replies = self.backend.generate(chats, replace(self.params, n=1, seed=seed))
        return [first_paragraph(r[0]) for r in replies]


@dataclass
class GroundedRoleplayer:
    """Sees only the m persona facts nearest to the current question."""

    backend: Backend | None  # None in verbatim mode
    template: PromptTemplate
    params: SamplingParams
    retriever: FactRetriever
    facts_per_answer: int = 2
    verbatim: bool = False  # answer with the retrieved first-person facts themselves, no model call

    def facts_for(self, persona: Persona, question: str) -> list[str]:
        return self.retriever.top_facts(question, split_facts(persona.description), self.facts_per_answer)

    def answer(
        self,
        personas: Sequence[Persona],
        tasks: Sequence[str],
        conversations: Sequence[Conversation],
        seed: int,
    ) -> list[str]:
        questions = [c.questions[-1] for c in conversations]
        facts = [self.facts_for(p, q) for p, q in zip(personas, questions)]
        if self.verbatim:
            return [" ".join(f) for f in facts]
        chats = [views.grounded_roleplayer_chat(self.template, f, q) for f, q in zip(facts, questions)]
        replies = self.backend.generate(chats, replace(self.params, n=1, seed=seed))
        return [first_paragraph(r[0]) for r in replies]


Roleplayer = PersonaRoleplayer | GroundedRoleplayer


_VERDICT = re.compile(r"\b([AB])\b")


@dataclass
class Judge:
    """Picks the answer that suits a persona better: 'A' (shown first), 'B', or '' when unreadable.

    method "generate" parses the first standalone A or B of the reply, as one would with an API
    judge; "logprobs" compares log p('A') with log p('B') after the prompt, so it always decides.
    """

    backend: Backend
    template: PromptTemplate
    params: SamplingParams
    method: Literal["generate", "logprobs"] = "logprobs"

    def pick(self, personas: Sequence[Persona], tasks: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[str]:
        chats = [
            views.judge_chat(self.template, p, t, a, b) for p, t, a, b in zip(personas, tasks, firsts, seconds)
        ]
        if self.method == "logprobs":
            scores = self.backend.logprobs(chats + chats, ["A"] * len(chats) + ["B"] * len(chats))
            return ["A" if a >= b else "B" for a, b in zip(scores[: len(chats)], scores[len(chats) :])]
        replies = self.backend.generate(chats, replace(self.params, n=1, temperature=0.0))
        return [_parse_verdict(r[0]) for r in replies]


def _parse_verdict(reply: str) -> str:
    match = _VERDICT.search(reply.strip())
    return match.group(1) if match else ""
