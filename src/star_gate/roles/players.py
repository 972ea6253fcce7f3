"""The players of the game: a questioner and two kinds of roleplayer, each bound to a backend.

A stage talks to these objects only; which backend (and model) serves a player is the config's
business. Every method is batched: a list in, a list out, in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from star_gate.backends.base import Backend, SamplingParams
from star_gate.data.records import Conversation, Pair, PairDetails, Persona
from star_gate.roles import views
from star_gate.roles.answers import asks, is_non_answer
from star_gate.roles.grounding import FactRetriever, questions_in, split_facts
from star_gate.roles.prompts import PromptTemplate, template_for


def first_paragraph(text: str) -> str:
    """Keep one turn's worth of text: small models often run on into a fake next turn."""
    return text.strip().split("\n\n")[0].strip()


def continued(opening: str, continuation: str) -> str:
    """An opening and the model's continuation of it as one turn. Backends return the
    continuation stripped, so the space between them comes back here, unless it goes on with
    punctuation ("...who am I talking to" + "?")."""
    if not opening or not continuation:
        return opening or continuation
    joiner = "" if continuation[0] in ",.;:?!)'" else " "
    return opening.rstrip() + joiner + continuation


ANSWER_ROUND = 4  # final-answer samples drawn per round (Questioner._replace_non_answers)


@dataclass
class Questioner:
    backend: Backend
    template: PromptTemplate
    params: SamplingParams
    answer_template: PromptTemplate | None = None  # final answers' template; None: `template`
    answer_samples: int = 0  # samples drawn when the greedy final answer is no answer
    answer_temperature: float = 1.0  # and their temperature
    ask_samples: int = 0  # samples drawn when a turn asks nothing (simulate.ask_samples)

    def ask(
        self,
        tasks: Sequence[str],
        conversations: Sequence[Conversation],
        seed: int,
        openings: Sequence[str] | None = None,
    ) -> list[str]:
        """The next question of each conversation. openings (one per conversation, '' for none):
        words the question must start with; the model writes the rest (simulate.openings)."""
        return self.ask_counting(tasks, conversations, seed, openings)[0]

    def ask_counting(
        self,
        tasks: Sequence[str],
        conversations: Sequence[Conversation],
        seed: int,
        openings: Sequence[str] | None = None,
    ) -> tuple[list[str], list[int]]:
        """ask, and how many samples of each turn were rejected for asking nothing (none when
        ask_samples is 0: nothing is resampled, so nothing is rejected).

        A turn that asks nothing (roles/answers.asks) is replaced by the first of up to
        `ask_samples` further samples that asks, drawn in rounds of ANSWER_ROUND for the turns
        no earlier round fixed; if none asks, the first sample stays (and counts as rejected).
        """
        openings = openings or [""] * len(tasks)
        chats = [
            views.questioner_chat(self.template, t, c) + views.opening_message(o)
            for t, c, o in zip(tasks, conversations, openings)
        ]
        replies = self.backend.generate(chats, replace(self.params, n=1, seed=seed))
        questions = [first_paragraph(continued(o, r[0])) for o, r in zip(openings, replies)]
        failing = [not asks(q) for q in questions]
        todo = [i for i, fails in enumerate(failing) if fails]
        rejected = [int(fails and self.ask_samples > 0) for fails in failing]
        drawn = 0
        while todo and drawn < self.ask_samples:
            n = min(ANSWER_ROUND, self.ask_samples - drawn)
            params = replace(self.params, n=n, seed=seed + 7919 * (1 + drawn // ANSWER_ROUND))
            fixed = set()
            for i, samples in zip(todo, self.backend.generate([chats[i] for i in todo], params)):
                candidates = [first_paragraph(continued(openings[i], s)) for s in samples]
                asking = next((k for k, q in enumerate(candidates) if asks(q)), None)
                rejected[i] += len(candidates) if asking is None else asking
                if asking is not None:
                    questions[i] = candidates[asking]
                    fixed.add(i)
            todo = [i for i in todo if i not in fixed]
            drawn += n
        return questions, rejected

    def respond(
        self, tasks: Sequence[str], conversations: Sequence[Conversation], max_new_tokens: int
    ) -> list[str]:
        """Final answers at temperature 0, with the task repeated after the conversation, under
        `answer_template` (regularize.answer_prompt) when set, else the questioner's template."""
        template = self.answer_template or self.template
        chats = [views.final_answer_chat(template, t, c) for t, c in zip(tasks, conversations)]
        greedy = replace(self.params, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        answers = [r[0].strip() for r in self.backend.generate(chats, greedy)]
        return self._replace_non_answers(chats, answers, max_new_tokens)

    def _replace_non_answers(
        self, chats: list, answers: list[str], max_new_tokens: int
    ) -> list[str]:
        """Where the greedy answer asks again or says nothing, the first of up to `answer_samples`
        samples (at answer_temperature) that does answer; else the greedy one.

        Samples come in rounds of ANSWER_ROUND, each round with its own seed, for the answers that
        no earlier round fixed: a model that asks again by habit gets more tries, at little cost,
        since most answers are fixed by the first round.
        """
        todo = [i for i, answer in enumerate(answers) if is_non_answer(answer)]
        drawn = 0
        while todo and drawn < self.answer_samples:
            n = min(ANSWER_ROUND, self.answer_samples - drawn)
            params = replace(
                self.params,
                n=n,
                temperature=self.answer_temperature,
                max_new_tokens=max_new_tokens,
                seed=drawn // ANSWER_ROUND,
            )
            for index, samples in zip(
                todo, self.backend.generate([chats[i] for i in todo], params)
            ):
                answers[index] = next(
                    (s.strip() for s in samples if not is_non_answer(s)), answers[index]
                )
            todo = [i for i in todo if is_non_answer(answers[i])]
            drawn += n
        return answers


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
            views.roleplayer_chat(self.template, p, t, c)
            for p, t, c in zip(personas, tasks, conversations)
        ]
        replies = self.backend.generate(chats, replace(self.params, n=1, seed=seed))
        return [first_paragraph(r[0]) for r in replies]


# What the grounded and facts roleplayers say to a turn that asks nothing (answer_questions_only).
NOT_ASKED = "Okay."


@dataclass
class GroundedRoleplayer:
    """Sees only the m persona facts nearest to the current question."""

    backend: Backend | None  # None in verbatim mode
    template: PromptTemplate
    params: SamplingParams
    retriever: FactRetriever
    facts_per_answer: int = 2
    verbatim: bool = False  # answer with the retrieved first-person facts themselves, no model call
    repeat_facts: bool = True  # False: a fact already told in this conversation is not told again
    # True: only the turn's questions are answered; a turn that asks nothing is told nothing
    answer_questions_only: bool = False

    def facts_for(self, persona: Persona, question: str, told: Sequence[str] = ()) -> list[str]:
        """The facts_per_answer persona facts nearest to the question, among those not yet told
        (all of them once every fact has been told); with answer_questions_only, nearest to the
        turn's question sentences, and none when it has none."""
        if self.answer_questions_only:
            question = questions_in(question)
            if not question:
                return []
        facts = [f for f in split_facts(persona.description) if f not in told] or split_facts(
            persona.description
        )
        return self.retriever.top_facts(question, facts, self.facts_per_answer)

    def facts_for_last(self, persona: Persona, conversation: Conversation) -> list[str]:
        """The facts behind the answer to the conversation's last question: with repeat_facts
        off, those retrieved for the earlier questions (retrieval is deterministic) are left out."""
        if self.repeat_facts:
            return self.facts_for(persona, conversation.questions[-1])
        told: list[str] = []
        for question in conversation.questions:
            facts = self.facts_for(persona, question, told)
            told += facts
        return facts

    def answer(
        self,
        personas: Sequence[Persona],
        tasks: Sequence[str],
        conversations: Sequence[Conversation],
        seed: int,
    ) -> list[str]:
        questions = [c.questions[-1] for c in conversations]
        if self.answer_questions_only:  # the model hears the questions only, as retrieval did
            questions = [questions_in(q) for q in questions]
        facts = [self.facts_for_last(p, c) for p, c in zip(personas, conversations)]
        if self.verbatim:
            return [" ".join(f) or NOT_ASKED for f in facts]
        asked = [i for i, f in enumerate(facts) if f]
        chats = [
            views.grounded_roleplayer_chat(self.template, facts[i], questions[i]) for i in asked
        ]
        replies = (
            self.backend.generate(chats, replace(self.params, n=1, seed=seed)) if chats else []
        )
        answers = [NOT_ASKED] * len(conversations)
        for i, reply in zip(asked, replies):
            answers[i] = first_paragraph(reply[0])
        return answers


NO_PREFERENCE = "I have no particular preference about that."


@dataclass
class DetailsRoleplayer:
    """A simulated user of a dataset with missing details (IN3): it tells the fact of each missing
    detail that the question asks about (`matcher.asked`), and that it has no preference when the
    question asks about none. No model: what a question recovers depends on the question only.
    It answers for the users of the pairs it was told about (`knowing`)."""

    matcher: object  # a DetailMatcher (roles/detail_matcher.py)
    details: dict[str, PairDetails] = field(default_factory=dict)  # persona id -> its details

    def knowing(self, pairs: Sequence[Pair]) -> DetailsRoleplayer:
        """This roleplayer, able to answer for the users of these pairs."""
        known = {p.persona.persona_id: p.details for p in pairs if p.details is not None}
        return DetailsRoleplayer(self.matcher, {**self.details, **known})

    def facts_asked(self, persona: Persona, question: str) -> list[str]:
        if persona.persona_id not in self.details:
            raise ValueError(f"no missing details known for user {persona.persona_id!r}")
        details = self.details[persona.persona_id].details
        return [details[i].fact for i in self.matcher.asked(question, details)]

    def answer(
        self,
        personas: Sequence[Persona],
        tasks: Sequence[str],
        conversations: Sequence[Conversation],
        seed: int,
    ) -> list[str]:
        facts = [self.facts_asked(p, c.questions[-1]) for p, c in zip(personas, conversations)]
        return [" ".join(f"{fact}." for fact in told) or NO_PREFERENCE for told in facts]


Roleplayer = PersonaRoleplayer | GroundedRoleplayer | DetailsRoleplayer


_VERDICT = re.compile(r"\b([AB])\b")


JudgeMethod = Literal["generate", "logprobs", "pointwise"]


@dataclass
class Judge:
    """Judges which answer suits a persona better.

    `pick` names the answer it prefers of two: 'A' (shown first), 'B', or '' when unreadable.
    method "generate" parses the first standalone A or B of the reply, as one would with an API
    judge; "logprobs" compares log p('A') with log p('B') after the prompt, so it always decides.
    `log_odds` gives that comparison as a number, log p('A') - log p('B'), for calibrating over
    both orders. method "pointwise" shows one answer at a time (`fit_scores`: log p('Yes') -
    log p('No') under `pointwise_template`), so no position can be preferred.
    """

    backend: Backend
    template: PromptTemplate
    params: SamplingParams
    method: JudgeMethod = "logprobs"
    pointwise_template: PromptTemplate | None = None  # None: the judge_pointwise template

    def _chats(self, personas, tasks, firsts, seconds) -> list:
        return [
            views.judge_chat(self.template, p, t, a, b)
            for p, t, a, b in zip(personas, tasks, firsts, seconds)
        ]

    def log_odds(
        self,
        personas: Sequence[Persona],
        tasks: Sequence[str],
        firsts: Sequence[str],
        seconds: Sequence[str],
    ) -> list[float]:
        """log p('A') - log p('B') after each pairwise prompt: > 0 prefers the answer shown first."""
        return _contrast(self.backend, self._chats(personas, tasks, firsts, seconds), "A", "B")

    def pick(
        self,
        personas: Sequence[Persona],
        tasks: Sequence[str],
        firsts: Sequence[str],
        seconds: Sequence[str],
    ) -> list[str]:
        if self.method == "logprobs":
            return [
                "A" if odds >= 0 else "B"
                for odds in self.log_odds(personas, tasks, firsts, seconds)
            ]
        if self.method != "generate":
            raise ValueError(f"judge method {self.method!r} does not pick between two answers")
        chats = self._chats(personas, tasks, firsts, seconds)
        replies = self.backend.generate(chats, replace(self.params, n=1, temperature=0.0))
        return [_parse_verdict(r[0]) for r in replies]

    def fit_scores(
        self, personas: Sequence[Persona], tasks: Sequence[str], answers: Sequence[str]
    ) -> list[float]:
        """log p('Yes') - log p('No') after the pointwise prompt: how well one answer fits the persona."""
        template = self.pointwise_template or template_for("judge_pointwise")
        chats = [
            views.judge_pointwise_chat(template, p, t, a)
            for p, t, a in zip(personas, tasks, answers)
        ]
        return _contrast(self.backend, chats, "Yes", "No")


def _contrast(backend: Backend, chats: list, first: str, second: str) -> list[float]:
    """log p(first) - log p(second) after each chat, in one batched call."""
    if not chats:
        return []
    scores = backend.logprobs(chats + chats, [first] * len(chats) + [second] * len(chats))
    return [a - b for a, b in zip(scores[: len(chats)], scores[len(chats) :])]


def _parse_verdict(reply: str) -> str:
    match = _VERDICT.search(reply.strip())
    return match.group(1) if match else ""
